//! Chat templates (the Jinja source shipped in `tokenizer.chat_template`), rendered with minijinja.

use crate::{ModelError, Result};
use serde::{Deserialize, Serialize};

/// One chat message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A message with `role` and `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
}

/// A compiled chat template.
///
/// ```
/// use specula_models::{ChatMessage, ChatTemplate};
/// let t = ChatTemplate::new(
///     "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}",
///     None, None,
/// )?;
/// assert_eq!(t.render(&[ChatMessage::user("hi")], true)?, "<user>hi<assistant>");
/// # Ok::<(), specula_models::ModelError>(())
/// ```
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    source: String,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl ChatTemplate {
    /// Compiles `source`; parse errors are reported now, not at render time.
    pub fn new(source: &str, bos_token: Option<String>, eos_token: Option<String>) -> Result<Self> {
        let t = ChatTemplate {
            source: source.to_string(),
            bos_token,
            eos_token,
        };
        t.env()?;
        Ok(t)
    }

    /// The Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    fn env(&self) -> Result<minijinja::Environment<'static>> {
        let mut env = minijinja::Environment::new();
        env.set_unknown_method_callback(python_methods);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template_owned("chat", self.source.clone())
            .map_err(|e| ModelError::ChatTemplate(e.to_string()))?;
        Ok(env)
    }

    /// Renders the conversation; `add_generation_prompt` appends the assistant turn header.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let env = self.env()?;
        let tmpl = env
            .get_template("chat")
            .map_err(|e| ModelError::ChatTemplate(e.to_string()))?;
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.clone().unwrap_or_default(),
            eos_token => self.eos_token.clone().unwrap_or_default(),
        })
        .map_err(|e| ModelError::ChatTemplate(e.to_string()))
    }
}

/// The few Python string methods chat templates commonly call.
fn python_methods(
    _state: &minijinja::State,
    value: &minijinja::Value,
    method: &str,
    args: &[minijinja::Value],
) -> std::result::Result<minijinja::Value, minijinja::Error> {
    use minijinja::{Error, ErrorKind, Value};
    let Some(s) = value.as_str() else {
        return Err(Error::from(ErrorKind::UnknownMethod));
    };
    let arg = |i: usize| args.get(i).and_then(|a| a.as_str()).unwrap_or("");
    Ok(match method {
        "strip" => Value::from(s.trim()),
        "lstrip" => Value::from(s.trim_start()),
        "rstrip" => Value::from(s.trim_end()),
        "startswith" => Value::from(s.starts_with(arg(0))),
        "endswith" => Value::from(s.ends_with(arg(0))),
        "lower" => Value::from(s.to_lowercase()),
        "upper" => Value::from(s.to_uppercase()),
        "split" if args.is_empty() => {
            Value::from(s.split_whitespace().map(String::from).collect::<Vec<_>>())
        }
        "split" => Value::from(s.split(arg(0)).map(String::from).collect::<Vec<_>>()),
        _ => return Err(Error::from(ErrorKind::UnknownMethod)),
    })
}
