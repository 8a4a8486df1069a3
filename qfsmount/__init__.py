"""The `qfsmount` command: options, configuration, mount and daemon lifecycle."""
