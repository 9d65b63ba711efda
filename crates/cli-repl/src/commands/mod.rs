//! One module per subcommand.

pub mod convert;
pub mod infer;
pub mod predict;
pub mod summary;
pub mod train;
