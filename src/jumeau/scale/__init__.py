"""Scale-out: the store's layout read by an existing distributed engine (Apache Spark)."""
