//! What every strategy is handed besides its listener and signals: the
//! configuration, the protocol factory and the shutdown event.

use std::sync::Arc;

use switchyard_common::Factory;

use crate::config::Config;
use crate::shutdown::Shutdown;

/// Shared, cheap to clone.
#[derive(Clone)]
pub struct Context {
    /// What the server was asked to do.
    pub config: Arc<Config>,
    /// Makes one protocol per connection.
    pub factory: Factory,
    /// The process's stop event.
    pub shutdown: Shutdown,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("config", &self.config).field("shutdown", &self.shutdown).finish()
    }
}
