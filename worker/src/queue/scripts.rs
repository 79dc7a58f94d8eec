//! The Lua scripts of `docs/wire-format.md`, compiled into the binary from `lua/`, the same
//! files the Python producer loads.

use std::sync::LazyLock;

use redis::Script;

pub struct Scripts {
    pub enqueue: Script,
    pub fetch: Script,
    pub heartbeat: Script,
    pub ack: Script,
    pub cancel: Script,
    pub retry: Script,
    pub purge: Script,
    pub lock: Script,
    pub migrate: Script,
    pub note: Script,
    pub wake: Script,
}

pub const ENQUEUE_LUA: &str = include_str!("../../../lua/enqueue.lua");

pub static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    enqueue: Script::new(ENQUEUE_LUA),
    fetch: Script::new(include_str!("../../../lua/fetch.lua")),
    heartbeat: Script::new(include_str!("../../../lua/heartbeat.lua")),
    ack: Script::new(include_str!("../../../lua/ack.lua")),
    cancel: Script::new(include_str!("../../../lua/cancel.lua")),
    retry: Script::new(include_str!("../../../lua/retry.lua")),
    purge: Script::new(include_str!("../../../lua/purge.lua")),
    lock: Script::new(include_str!("../../../lua/lock.lua")),
    migrate: Script::new(include_str!("../../../lua/migrate.lua")),
    note: Script::new(include_str!("../../../lua/note.lua")),
    wake: Script::new(include_str!("../../../lua/wake.lua")),
});
