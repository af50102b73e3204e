"""The WebSync server: HTTP API, metadata store, change journal and block store.

The client imports ``websync_server.protocol`` (the shared wire models), which
runs this file first: it must stay free of imports, so the client never loads
the server's dependencies.  Import the parts directly:

- ``websync_server.app.create_app`` -- the Starlette app of docs/protocol.md
- ``websync_server.services.Services`` -- every component over one data directory
- ``websync_server.store.MetadataStore`` -- commits (``commit``), changes
  (``journal``), versions and trash (``history``)
- ``websync_server.blocks.BlockStore`` -- content-addressed blocks
- ``websync_server.accounts.Accounts`` -- users, passwords, device tokens
- ``websync_server._exceptions`` -- the error tree and its HTTP answers
- ``websync_server.cli.main`` -- the ``websync-server`` command
"""
