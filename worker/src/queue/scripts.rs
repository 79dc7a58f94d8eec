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

#[cfg(test)]
mod tests {
    /// The scripts that make work ready each carry their own copy of the wake-up (a Redis
    /// script cannot load another, and clients run `lua/` as it is): the copies must not
    /// drift apart. Each checks for waiting workers first and wakes them the same way.
    #[test]
    fn every_copy_of_the_wake_up_does_the_same() {
        let core = |name: &str, text: &str| -> Vec<String> {
            assert!(
                text.contains("if redis.call('EXISTS', idle) == 0 then"),
                "{name}: no check for waiting workers"
            );
            let start = text
                .find("local n = math.min(redis.call('ZCOUNT', idle, now, '+inf'), 1000)")
                .unwrap_or_else(|| panic!("{name}: no wake-up"));
            let end = text[start..]
                .find("unpack(tokens))")
                .unwrap_or_else(|| panic!("{name}: the wake-up pushes no tokens"));
            text[start..start + end]
                .lines()
                .map(|l| l.trim().to_owned())
                .collect()
        };
        let copies = [
            ("ack.lua", include_str!("../../../lua/ack.lua")),
            ("enqueue.lua", super::ENQUEUE_LUA),
            ("fetch.lua", include_str!("../../../lua/fetch.lua")),
            ("retry.lua", include_str!("../../../lua/retry.lua")),
            ("wake.lua", include_str!("../../../lua/wake.lua")),
        ];
        let first = core(copies[0].0, copies[0].1);
        for (name, text) in &copies[1..] {
            assert_eq!(core(name, text), first, "{name} differs from ack.lua");
        }
    }
}
