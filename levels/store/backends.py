"""Which metadata and blob stores a fabric opens: the embedded pair (LMDB and a local
directory, the default) or the shared pair (PostgreSQL and S3) that many hosts mount.

The shared backends' libraries (psycopg, boto3) are imported only when configured.
"""

from pathlib import Path

from levels.config import Config
from levels.errors import Invalid
from levels.store.blobs import BlobStore, DirectoryBlobStore
from levels.store.meta import LmdbMetaStore, MetaStore

LMDB_DIRECTORY = "meta.lmdb"  # the embedded metadata store, under the data directory


def holds_data(data_dir: Path, config: Config) -> bool:
    """Whether there is a fabric to check: always on the shared servers, and in a data
    directory once the embedded store has been made there."""
    if config.cross_level.metadata_backend == "postgresql":
        return True
    return (data_dir / LMDB_DIRECTORY).exists()


def open_meta(data_dir: Path, config: Config) -> MetaStore:
    cross = config.cross_level
    if cross.metadata_backend == "postgresql":
        if not cross.metadata_dsn:
            raise Invalid("config key cross_level.metadata_dsn: needed with metadata_backend "
                          "postgresql (or QFS_METADATA_DSN)")
        from levels.store.pg import PostgresMetaStore, host_name

        return PostgresMetaStore(cross.metadata_dsn, host_name(data_dir))
    return LmdbMetaStore(data_dir / LMDB_DIRECTORY, config.circuit_fs.lmdb_map_size_mb)


def open_blobs(data_dir: Path, config: Config) -> BlobStore:
    sst, cfs = config.state_store, config.circuit_fs
    # Circuit programs live in the metadata store, in their version's transaction; the
    # fabric's blobs are checkpoints. So either section's s3 puts the blobs in S3 (the
    # reference's QFS_CIRCUIT_STORAGE_BACKEND=s3 alone gives an S3-backed fabric).
    if "s3" in (sst.storage_backend, cfs.storage_backend):
        from levels.store.s3 import S3BlobStore

        endpoint = sst.s3_endpoint or cfs.s3_endpoint
        bucket = sst.s3_bucket or cfs.s3_bucket
        if not bucket:
            raise Invalid("config key state_store.s3_bucket: needed with storage_backend s3 "
                          "(or circuit_fs.s3_bucket, QFS_S3_BUCKET)")
        return S3BlobStore(endpoint, bucket)
    return DirectoryBlobStore(Path(sst.storage_path) if sst.storage_path
                              else data_dir / "blobs")
