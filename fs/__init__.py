"""The grid file system (catalogue, object storage, replicas, FUSE client): see issue 6."""
