//! Print what a GGUF file holds: architecture, configuration, tokenizer and chat template.
//!
//! ```text
//! cargo run --release --example inspect -- model.gguf ["a message to render with the chat template"]
//! ```

use specula_models::{gguf_config, ChatMessage, GgufFile, Tokenizer};

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or("usage: inspect MODEL.gguf [MESSAGE]")?;
    let file = GgufFile::open(&path)?;
    println!("{:#?}", gguf_config(&file)?);
    let mut types: std::collections::BTreeMap<String, usize> = Default::default();
    for info in file.content.tensor_infos.values() {
        *types.entry(format!("{:?}", info.ggml_dtype)).or_default() += 1;
    }
    println!("tensor types: {types:?}");
    let tok = Tokenizer::from_gguf(&file)?;
    println!(
        "tokenizer: {} ids, bos {:?}, eos {:?}",
        tok.vocab_size(),
        tok.bos_token_id(),
        tok.eos_token_ids()
    );
    if let Some(msg) = args.next() {
        let prompt = tok.apply_chat_template(&[ChatMessage::user(msg)])?;
        println!("chat prompt:\n{prompt}");
        println!("ids: {:?}", tok.encode(&prompt)?);
    }
    Ok(())
}
