"""Chapter experiments: the runs, tables and figures each notebook calls."""
