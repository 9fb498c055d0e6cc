"""In-process fakes of remote services that cannot run on a laptop (Databricks)."""
