//! Opening and validating GGUF files, and reading their metadata.

use crate::{ModelError, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

/// An opened, validated GGUF file: metadata and tensor index parsed, every tensor checked to lie
/// inside the file.
pub struct GgufFile {
    /// The file path.
    pub path: PathBuf,
    /// Parsed header.
    pub content: Content,
    pub(crate) reader: BufReader<File>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("tensors", &self.content.tensor_infos.len())
            .field("metadata", &self.content.metadata.len())
            .finish()
    }
}

impl GgufFile {
    /// Opens `path`, parses the header and checks that no tensor extends past the end of the file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| ModelError::io(&path, e))?;
        let actual = file.metadata().map_err(|e| ModelError::io(&path, e))?.len();
        let mut reader = BufReader::new(file);
        let content = Content::read(&mut reader).map_err(|e| {
            let reason = e.to_string();
            if reason.contains("unknown dtype") {
                ModelError::UnsupportedQuantization(format!("{}: {reason}", path.display()))
            } else {
                ModelError::InvalidGguf {
                    path: path.clone(),
                    reason,
                }
            }
        })?;
        let mut infos: Vec<_> = content.tensor_infos.iter().collect();
        infos.sort_by_key(|(_, info)| info.offset);
        for (name, info) in infos {
            let dtype = info.ggml_dtype;
            let elems = info.shape.elem_count();
            let bytes = (elems / dtype.block_size()) as u64 * dtype.type_size() as u64;
            let needed = content.tensor_data_offset + info.offset + bytes;
            if needed > actual {
                return Err(ModelError::Truncated {
                    path,
                    tensor: name.clone(),
                    needed,
                    actual,
                });
            }
        }
        Ok(GgufFile {
            path,
            content,
            reader,
        })
    }

    /// The raw metadata value for `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    /// A string metadata value.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        match self.get(key) {
            Some(Value::String(s)) => Ok(s),
            _ => Err(ModelError::MissingMetadata(key.to_string())),
        }
    }

    /// An integer metadata value of any integer width.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.get(key)
            .and_then(value_to_u64)
            .ok_or_else(|| ModelError::MissingMetadata(key.to_string()))
    }

    /// A float metadata value.
    pub fn get_f64(&self, key: &str) -> Result<f64> {
        match self.get(key) {
            Some(Value::F32(x)) => Ok(*x as f64),
            Some(Value::F64(x)) => Ok(*x),
            Some(v) => value_to_u64(v)
                .map(|x| x as f64)
                .ok_or_else(|| ModelError::MissingMetadata(key.to_string())),
            None => Err(ModelError::MissingMetadata(key.to_string())),
        }
    }

    /// A boolean metadata value.
    pub fn get_bool(&self, key: &str) -> Option<bool> {
        match self.get(key) {
            Some(Value::Bool(b)) => Some(*b),
            _ => None,
        }
    }

    /// An array-of-strings metadata value.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>> {
        match self.get(key) {
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.as_str()),
                    _ => Err(ModelError::MissingMetadata(key.to_string())),
                })
                .collect(),
            _ => Err(ModelError::MissingMetadata(key.to_string())),
        }
    }

    /// An array-of-integers metadata value.
    pub fn get_int_array(&self, key: &str) -> Result<Vec<i64>> {
        match self.get(key) {
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::I32(x) => Ok(*x as i64),
                    Value::I64(x) => Ok(*x),
                    other => value_to_u64(other)
                        .map(|x| x as i64)
                        .ok_or_else(|| ModelError::MissingMetadata(key.to_string())),
                })
                .collect(),
            _ => Err(ModelError::MissingMetadata(key.to_string())),
        }
    }
}

fn value_to_u64(v: &Value) -> Option<u64> {
    match v {
        Value::U8(x) => Some(*x as u64),
        Value::U16(x) => Some(*x as u64),
        Value::U32(x) => Some(*x as u64),
        Value::U64(x) => Some(*x),
        Value::I8(x) => u64::try_from(*x).ok(),
        Value::I16(x) => u64::try_from(*x).ok(),
        Value::I32(x) => u64::try_from(*x).ok(),
        Value::I64(x) => u64::try_from(*x).ok(),
        _ => None,
    }
}
