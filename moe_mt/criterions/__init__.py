"""fairseq criterions of moemt (importing this package registers them)."""
