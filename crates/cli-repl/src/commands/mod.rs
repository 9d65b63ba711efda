//! One module per subcommand.

pub mod convert;
pub mod evaluate;
pub mod export;
pub mod infer;
pub mod predict;
pub mod summary;
pub mod train;
