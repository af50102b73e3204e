"""The synced folder: a front end of the engine that keeps a folder of real files in step.

Follow one change down: `watcher` names the paths that changed, `merger`
compares the folder (`tree`), the replica and the last synced state
(`known`) and calls the core by path (`corepaths`); remote changes come up
from the engine as a `Notify` and go the other way.  `probe` finds out
which names the folder's file system takes (the rest are shown under
aliases, `websync_fs.namepolicy`), `ignore` says what never leaves the
machine, `guards` what keeps the folder from harming the store, and
`client` wires it all to the engine.

The package imports nothing itself: a command that only asks `guards` (is
this place inside a synced folder?) must not pay for the engine's imports.
"""
