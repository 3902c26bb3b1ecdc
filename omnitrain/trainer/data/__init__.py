"""Training data: Parquet shards of pre-encoded samples, a sequential reader, packing into token budgets and a
compute balancer across data-parallel ranks."""
