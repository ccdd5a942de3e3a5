pub mod config; pub mod error; pub use error::{ModelError, Result};
