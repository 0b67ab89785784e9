"""One module per DVC stage: parse arguments, read params, call the library, write outputs."""
