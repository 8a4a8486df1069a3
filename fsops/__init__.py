"""The FUSE adapter: routes paths to levels/ and maps their errors to errno. No fabric logic."""
