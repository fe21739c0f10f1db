"""The one typed settings object for every knob of medgraph.

Every field can be set through the environment with the ``MEDGRAPH_`` prefix
(``MEDGRAPH_NEO4J_BOLT_PORT=7688``) or through a ``.env`` file in the working directory.
The README's configuration table is generated from this class (``medgraph config --markdown``).
"""

from __future__ import annotations

import re
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import quote, urlsplit

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
REDIS_PASSWORD_FILE = "redis-password"
# The longest read lease an API process may hold (``search_read_lease_s``): a deletion made just
# after Redis (re)started waits this long, so that a lease granted before is over.
MAX_READ_LEASE_S = 5.0


def read_or_create_secret(path: Path, nbytes: int) -> tuple[str, bool]:
    """A secret kept in ``path`` (mode 0600), generated on first use. Returns (secret,
    created_now)."""
    if path.exists():
        return path.read_text().strip(), False
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(nbytes)
    # O_EXCL so that two processes starting at once cannot both write a different secret.
    try:
        with open(path, "x") as handle:
            handle.write(value + "\n")
    except FileExistsError:
        return path.read_text().strip(), False
    path.chmod(0o600)
    return value, True


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MEDGRAPH_", env_file=".env", extra="ignore")

    # --- local state -------------------------------------------------------------------------
    home: Path = Field(
        REPO_ROOT / ".medgraph",
        description="Local state: Neo4j and Redis data, generated secrets, models, logs.",
    )

    cache_dir: Path = Field(
        Path.home() / ".cache" / "medgraph",
        description="Downloaded Neo4j, APOC and GDS jars (shared by every home on the machine).",
    )

    # --- Neo4j -------------------------------------------------------------------------------
    neo4j_uri: str | None = Field(
        None, description="Bolt URI. Default: bolt://<neo4j_host>:<neo4j_bolt_port>."
    )
    neo4j_host: str = Field("127.0.0.1", description="Address the local Neo4j listens on.")
    neo4j_bolt_port: int = Field(7687, ge=1, le=65535, description="Bolt port.")
    neo4j_http_port: int = Field(7474, ge=1, le=65535, description="HTTP port (Browser).")
    neo4j_user: str = Field("neo4j", description="Neo4j user name.")
    neo4j_password: str | None = Field(
        None,
        description="Neo4j password. Default: generated once into <home>/secrets/neo4j-password.",
    )
    neo4j_auth: bool = Field(True, description="Run the local Neo4j with authentication on.")
    neo4j_database: str = Field("neo4j", description="Database name used by every query.")
    neo4j_version: str = Field("5.26.19", description="Neo4j Community version fetched.")
    neo4j_heap: str = Field("1g", description="JVM heap of the local Neo4j (-Xms/-Xmx).")
    neo4j_pagecache: str = Field("512m", description="Neo4j page cache size.")
    neo4j_tx_log_preallocate: bool = Field(
        True,
        description="Neo4j writes each transaction log file at its full 256 MB up front "
        "(db.tx_log.preallocate). Off, the files take only what is written.",
    )
    neo4j_data_dir: Path | None = Field(
        None, description="Neo4j data folder. Default: <home>/neo4j/data."
    )
    neo4j_start_timeout_s: float = Field(180.0, gt=0, description="Wait for Bolt on start.")

    # --- Redis / Celery ----------------------------------------------------------------------
    redis_host: str = Field("127.0.0.1", description="Address the local Redis listens on.")
    redis_port: int = Field(6379, ge=1, le=65535, description="Redis port.")
    redis_url: str | None = Field(
        None,
        description="Broker/result URL. Default: redis://:<password>@<redis_host>:<redis_port>/0.",
    )
    redis_password: str | None = Field(
        None,
        description="Password of the local Redis. Default: generated once into "
        "<home>/secrets/redis-password.",
    )

    # --- Orthanc, the PACS feeding the archive (issue 25) -----------------------------------
    orthanc_host: str = Field("127.0.0.1", description="Address the local Orthanc listens on.")
    orthanc_http_port: int = Field(
        8042, ge=1, le=65535, description="Orthanc's REST API, Explorer and DICOMweb port."
    )
    orthanc_dicom_port: int = Field(4242, ge=1, le=65535, description="Orthanc's DICOM port.")
    orthanc_url: str | None = Field(
        None, description="Orthanc to follow. Default: http://<orthanc_host>:<orthanc_http_port>."
    )
    orthanc_user: str = Field("medgraph", description="Orthanc user name.")
    orthanc_password: str | None = Field(
        None,
        description="Orthanc password. Default: generated once into "
        "<home>/secrets/orthanc-password.",
    )
    orthanc_poll_s: float = Field(
        2.0, gt=0, le=300, description="How often `medgraph follow orthanc` reads the feed."
    )

    # --- data and model ----------------------------------------------------------------------
    data_dir: Path = Field(
        REPO_ROOT / "data",
        description="Bundled demo, training and test images: one set (a folder with labels.csv "
        "and images/) or a folder of sets, each used (data/ holds the 64-px and 128-px NIH sets).",
    )
    data_roots: list[Path] = Field(
        default_factory=lambda: [REPO_ROOT / "data"],
        description="Only image files under these folders are ever served by the API.",
    )
    model_dir: Path | None = Field(None, description="Checkpoints folder. Default: <home>/models.")
    initial_weights: Path | None = Field(
        None, description="Local DenseNet-121 initial weights (.pth); none = from scratch."
    )
    image_size: int = Field(64, ge=32, le=1024, description="Model input resolution (pixels).")
    gpu_image_size: int = Field(
        128,
        ge=32,
        le=1024,
        description="Training resolution of `medgraph train` when it runs on a CUDA GPU and no "
        "--image-size is given (the CPU trains at image_size).",
    )
    max_image_pixels: int = Field(
        80_000_000, gt=0, description="Larger decoded images are refused (decompression bombs)."
    )
    max_file_bytes: int = Field(
        256 * 1024 * 1024, gt=0, description="Larger image files are refused."
    )
    max_decode_mib: int = Field(
        1024, ge=16,
        description="Images whose decoding would need more memory than this (a conservative "
        "estimate from the header of decode, conversions, float arithmetic and resize, made "
        "before any pixel is decoded) are refused. 1024 admits 4k x 4k 16-bit DICOMs.",
    )  # fmt: skip
    max_image_aspect_ratio: float = Field(
        20.0, ge=1.0,
        description="Images longer than this many times their width (or the reverse) are "
        "refused before decoding (resizing extreme shapes costs far more than their pixels).",
    )  # fmt: skip
    decode_slots: int = Field(
        2, ge=1, le=64,
        description="Images one API process decodes and embeds at once; others wait up to "
        "decode_wait_s, then get 503. Peak decoding memory = decode_slots x max_decode_mib.",
    )  # fmt: skip
    decode_wait_s: float = Field(
        60.0, gt=0, description="How long an upload waits for a free decode slot."
    )
    patient_key_secret: str | None = Field(
        None,
        description="HMAC secret for patient keys. Default: generated once into <home>/secrets.",
    )
    keep_original_name_keys: bool = Field(
        False,
        description="Store an HMAC of each ingested file's base name (keyed like patient "
        "keys), so `medgraph find-name NAME` can find its image. Off: no trace of file names.",
    )

    # --- graph -------------------------------------------------------------------------------
    knn_k: int = Field(10, ge=1, le=200, description="SIMILAR edges per image (kNN).")
    min_cosine: float = Field(-1.0, ge=-1.0, le=1.0, description="Edges below this are dropped.")
    write_batch_size: int = Field(1000, ge=1, description="Rows per UNWIND write.")

    # --- API ---------------------------------------------------------------------------------
    api_host: str = Field("127.0.0.1", description="Address the API listens on.")
    api_port: int = Field(5000, ge=1, le=65535, description="API and dashboard port.")
    default_k: int = Field(50, ge=1, le=1000, description="Default number of search results.")

    # --- encoder (services/encoder) --------------------------------------------------------
    encoder_checkpoint: Path | None = Field(
        None,
        description="Encoder checkpoint for image codes. Default: <models_dir>/densenet121-"
        "<image_size>px.pt when `medgraph train` wrote one, else the shipped models/densenet121-"
        "demo.pt (sha256 verified, made for image_size), else that first path, trained on the "
        "bundled sets.",
    )
    encoder_device: str | None = Field(
        None, description="Torch device for training and image codes. Default: cuda if present."
    )
    train_recipe: str = Field(
        "retrieval",
        pattern="^(retrieval|paper|regularised)$",
        description="Training recipe: retrieval (the default: paper, plus a batch-norm neck, a "
        "classifier that sees the code's direction and a label metric fit on the training "
        "codes; it measured best on held-out retrieval, services/encoder/README.md), paper "
        "(Adam 1e-3, plateau schedule, light augmentation) or regularised (AdamW with weight "
        "decay, warm-up then cosine decay, strong augmentation). All: weighted BCE.",
    )
    train_epochs: int | None = Field(
        None, ge=1, description="Training epochs. Default: the recipe's (fits the demo's budget)."
    )
    train_batch_size: int = Field(32, ge=2, description="Training batch size (the paper's 32).")
    train_learning_rate: float = Field(1e-3, gt=0, description="Adam learning rate (paper: 1e-3).")
    train_plateau_patience: int = Field(
        2, ge=0, description="Epochs without validation-loss gain before the rate is cut by 10."
    )
    train_val_fraction: float = Field(
        0.2, gt=0, lt=1, description="Share of images, whole patients, held out for validation."
    )
    train_seed: int = Field(0, description="Seed of the patient split, weights and augmentation.")
    train_workers: int = Field(0, ge=0, description="Image loading processes (0 = in-process).")
    train_time_limit_s: float = Field(
        660.0,
        ge=0,
        description="Training stops before an epoch that would end past this many seconds, "
        "keeping the best epoch so far; 0 = no limit. Keeps the demo quick on a busy CPU.",
    )
    embed_batch_size: int = Field(64, ge=1, description="Images per forward pass for image codes.")

    # --- ingestion (services/ingest) -------------------------------------------------------
    ingest_files_per_task: int = Field(
        128, ge=1, le=4096,
        description="Image files per embedding task (one Celery message, one node write).",
    )  # fmt: skip
    edge_write_batch_size: int = Field(
        10_000, ge=1, description="SIMILAR relationships per UNWIND write transaction."
    )
    knn_block_mib: int = Field(
        256, ge=8, description="Memory of one similarity block in the exact kNN (MiB, float32)."
    )
    knn_index_candidates: int = Field(
        50, ge=2, le=1000,
        description="Vector-index neighbours fetched per new image in incremental ingest "
        "(re-ranked by exact cosine; at least knn_k + 1 are used).",
    )  # fmt: skip
    incremental_max_ratio: float = Field(
        0.1, ge=0.0,
        description="Incremental edge building when new images <= this ratio of the images "
        "already linked; otherwise the whole kNN graph is recomputed exactly (bulk).",
    )  # fmt: skip
    celery_visibility_timeout_s: int = Field(
        900, ge=5,
        description="Redis broker visibility timeout: an unacknowledged task of a worker that "
        "died is redelivered after this long (must exceed the longest task).",
    )  # fmt: skip
    task_max_retries: int = Field(
        8, ge=0, description="Retries (exponential backoff) for transient Neo4j/Redis errors."
    )
    ingest_max_crashes: int = Field(
        3, ge=1,
        description="Worker deaths on one embedding task before its files are retried one by "
        "one (a file that still kills the worker is then reported as failed).",
    )  # fmt: skip
    ingest_job_ttl_s: int = Field(
        14 * 24 * 3600, ge=60, description="How long ingest job progress is kept in Redis."
    )
    ingest_report_dir: Path | None = Field(
        None, description="Where failure reports go. Default: <home>/ingest-reports."
    )

    # --- dashboard (services/dashboard) -------------------------------------------------------
    dashboard_neo4j_browser_url: str | None = Field(
        None,
        description="Neo4j Browser address the dashboard links to, as the user's browser reaches "
        "it. Default: http://<neo4j_host>:<neo4j_http_port>/browser/.",
    )

    # --- communities (services/communities) ---------------------------------------------------
    cluster_algorithm: str = Field(
        "leiden", pattern="^(leiden|louvain|cnm)$",
        description="Community detection: leiden (GDS, inside Neo4j, then a merge pass) or "
        "louvain (GDS), or cnm (Clauset-Newman-Moore greedy modularity in networkx, as in the "
        "paper; small graphs).",
    )  # fmt: skip
    cluster_resolution: float = Field(
        1.0, gt=0,
        description="Modularity resolution gamma (Leiden and CNM; GDS Louvain supports only 1).",
    )  # fmt: skip
    cluster_seed: int = Field(42, description="Random seed of Leiden.")
    cluster_concurrency: int = Field(
        1,
        ge=1,
        description="GDS threads for the projection and Leiden/Louvain; 1 keeps runs reproducible.",
    )
    cluster_max_levels: int = Field(10, ge=1, description="Leiden/Louvain aggregation levels.")
    cluster_seed_previous: bool = Field(
        True,
        description="Start Leiden/Louvain from the stored communities (GDS seedProperty), so "
        "that a re-run stays close to the previous partition and keeps more ids.",
    )  # fmt: skip
    cluster_cnm_max_nodes: int = Field(
        10_000, ge=2,
        description="CNM (networkx, single-threaded Python) refuses larger graphs "
        "(it took 205 s at 20,000 images).",
    )  # fmt: skip
    cluster_rerun_fraction: float = Field(
        0.1, gt=0, le=1,
        description="A full re-clustering is due when the images added since the last run "
        "exceed this fraction of the images that run clustered.",
    )  # fmt: skip

    # --- retrieval and REST API (services/retrieval, services/api) ----------------------------
    region_query_edges: int | None = Field(
        None, ge=1, le=1000,
        description="Edges the query gets to its nearest images in region search (Algorithm 1). "
        "Default: knn_k, as stored images have.",
    )  # fmt: skip
    region_max_communities: int = Field(
        32, ge=1, description="Most communities one region search visits before it stops."
    )
    region_seed_candidates: int = Field(
        8192, ge=0,
        description="Eligible images (rows of the scan lists nearest the query) among which "
        "region search looks for the query's nearest images; 0 = every image (exact). Scan "
        "lists are tight neighbourhoods on clustered data but arbitrary slices of a diffuse "
        "community, so the floor is set by the diffuse case.",
    )  # fmt: skip
    ranked_seed_candidates: int = Field(
        1024, ge=0,
        description="Eligible images `community_ranked` scores at least, in the scan lists "
        "(k-means lists inside the communities) whose centroids are nearest the query (its "
        "nprobe); 0 = every image (exact).",
    )  # fmt: skip
    ranked_min_communities: int = Field(
        1, ge=1, description="Communities `community_ranked` always visits."
    )
    search_live_read_model: bool = Field(
        True,
        description="API processes: the read model follows the graph's change log in the "
        "background and a search makes no Neo4j round trip (deleted keys come from Redis: "
        "through the read lease, or read per search without one); false: every search checks "
        "the graph version in Neo4j first.",
    )
    search_follow_interval_s: float = Field(
        0.1, gt=0, le=0.5,
        description="How often each API process reads the graph version in the background and "
        "applies the logged changes to its read model (a new image is found within this plus "
        "the apply's time of its ingest job's `done`).",
    )  # fmt: skip
    search_read_lease_s: float = Field(
        0.5, ge=0, le=MAX_READ_LEASE_S,
        description="API processes with a live read model: how long a read lease in Redis lasts "
        "(renewed every tenth of it). While a process holds one, every deletion waits for it to "
        "acknowledge the deletion before the `DELETE` answers, so its searches read no deleted "
        "keys from Redis; a process that stops renewing is waited for until its lease ends. "
        "0: no leases (every search reads the latest deletion from Redis).",
    )  # fmt: skip
    search_layout_memory_mib: int = Field(
        1400, ge=0,
        description="API processes: the resident memory (MiB) up to which a new clustering run "
        "or a compaction may lay the read model out again in a copy (briefly two matrices); "
        "past it a new partition is adopted over the same rows (no copy; members outside a "
        "community's longest run of rows are gathered per search) and compaction waits.",
    )  # fmt: skip
    ranked_max_communities: int = Field(
        16, ge=1, description="Most communities one `community_ranked` search visits."
    )
    ranked_centroid_margin: float = Field(
        0.05, ge=0, le=2,
        description="`community_ranked` also visits a community the query has no edge to while "
        "its nearest scan list's cosine to the query is within this margin of the best list's.",
    )  # fmt: skip
    search_max_k: int = Field(1000, ge=1, le=100_000, description="Largest k a search accepts.")
    search_rerank: Literal["none", "findings"] = Field(
        "none",
        description="The API's default `rerank`: `findings` re-ranks each search's first 8 x k "
        "results by the images' stored predicted findings (services/retrieval/rerank.py).",
    )
    search_max_index_candidates: int = Field(
        10_000, ge=10,
        description="Most vector-index candidates one query asks for while filters thin them.",
    )  # fmt: skip
    api_max_upload_bytes: int = Field(
        32 * 1024 * 1024, ge=1024,
        description="Largest request body (upload) the API accepts; larger ones get 413.",
    )  # fmt: skip
    api_threads: int = Field(8, ge=1, le=256, description="Worker threads of `medgraph serve`.")
    api_connection_limit: int = Field(
        1000, ge=10, le=60_000,
        description="Open connections `medgraph serve` holds at once (idle and slow ones "
        "included); beyond it, new connections wait in the listen backlog. The process raises "
        "its open-file limit to fit.",
    )  # fmt: skip
    api_header_timeout_s: float = Field(
        10.0, gt=0, le=600,
        description="A request's headers must arrive complete within this many seconds of its "
        "first byte, or the connection is closed (slow-header clients).",
    )  # fmt: skip
    api_request_timeout_s: float = Field(
        120.0, gt=0, le=3600,
        description="A whole request, body included, must arrive within this many seconds of its "
        "first byte, or the connection is closed (slow-body clients; 32 MiB at 280 KB/s).",
    )  # fmt: skip
    api_idle_timeout_s: float = Field(
        30.0, gt=0, le=3600,
        description="A keep-alive connection with no request in progress is closed after this "
        "many seconds without a byte.",
    )  # fmt: skip
    api_thumbnail_pixels: int = Field(
        128, ge=16, le=1024, description="Longest side of the PNG thumbnails served by the API."
    )
    api_neighbourhood_max_nodes: int = Field(
        500, ge=1, le=20_000, description="Most nodes a neighbourhood request returns."
    )
    neo4j_retry_time_s: float = Field(
        30.0, ge=0.0,
        description="How long a query that failed on a transient Neo4j error (server down, "
        "leader switch) is retried before the error reaches the caller (the API answers 503).",
    )  # fmt: skip
    api_upload_dir: Path | None = Field(
        None,
        description="Where uploads kept with add=true are stored (must lie under a data root). "
        "Default: <first data root>/uploads.",
    )

    # --- address checks (reliability) ----------------------------------------------------------
    @field_validator("neo4j_uri")
    @classmethod
    def _neo4j_uri_scheme(cls, value: str | None) -> str | None:
        return _with_scheme(value, NEO4J_URI_SCHEMES, "bolt://127.0.0.1:7687")

    @field_validator("redis_url")
    @classmethod
    def _redis_url_scheme(cls, value: str | None) -> str | None:
        return _with_scheme(value, REDIS_URL_SCHEMES, "redis://127.0.0.1:6379/0")

    # --- access control (services/auth) -------------------------------------------------------
    api_rate_limit_per_minute: int = Field(
        1200, ge=0, description="Requests per minute per API key (or address); 0 = no limit."
    )
    api_auth_failures_per_minute: int = Field(
        30, ge=0,
        description="Failed authentications per minute per client address, and per key id a "
        "token names; after that, failures get 429 until the bucket refills. A valid key is "
        "never throttled by them (keys are checked first, in memory). 0 = no limit.",
    )  # fmt: skip
    api_key_cache_s: float = Field(
        0.5, ge=0.0, le=1.0,
        description="How long one API process trusts a key lookup; a revoked key is refused "
        "by every process within this time.",
    )  # fmt: skip
    api_ready_cache_s: float = Field(
        2.0, ge=0.0, le=60.0,
        description="How long /ready answers from its last check (one check at a time).",
    )  # fmt: skip
    api_cors_origins: list[str] = Field(
        default_factory=list,
        description="Origins allowed to call the API from a browser (CORS); empty = CORS off.",
    )

    # --- derived -----------------------------------------------------------------------------
    @property
    def bolt_uri(self) -> str:
        return self.neo4j_uri or f"bolt://{self.neo4j_host}:{self.neo4j_bolt_port}"

    @property
    def broker_url(self) -> str:
        if self.redis_url:
            return self.redis_url
        password = quote(self.redis_password_value(), safe="")
        return f"redis://:{password}@{self.redis_host}:{self.redis_port}/0"

    def redis_password_value(self) -> str:
        """``redis_password``, else the one generated once into <home>/secrets."""
        if self.redis_password:
            return self.redis_password
        return read_or_create_secret(self.secrets_dir / REDIS_PASSWORD_FILE, 24)[0]

    @property
    def orthanc_base_url(self) -> str:
        return (self.orthanc_url or f"http://{self.orthanc_host}:{self.orthanc_http_port}").rstrip(
            "/"
        )

    @property
    def secrets_dir(self) -> Path:
        return self.home / "secrets"

    @property
    def models_dir(self) -> Path:
        return self.model_dir or self.home / "models"

    @property
    def neo4j_home(self) -> Path:
        return self.home / "neo4j"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


NEO4J_URI_SCHEMES = ("bolt", "bolt+s", "bolt+ssc", "neo4j", "neo4j+s", "neo4j+ssc")
REDIS_URL_SCHEMES = ("redis", "rediss", "unix")


def _with_scheme(value: str | None, schemes: tuple[str, ...], example: str) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in schemes or not (parts.netloc or parts.path):
        raise ValueError(f"must be a URI like {example} (schemes: {', '.join(schemes)})")
    return value


def settings_problem(error: Exception) -> str:
    """What is wrong with the settings, naming the environment variables to fix."""
    if isinstance(error, ValidationError):
        lines = []
        for problem in error.errors(include_url=False):
            name = "MEDGRAPH_" + str(problem["loc"][0]).upper() if problem["loc"] else "settings"
            lines.append(f"invalid setting {name}={problem.get('input')!r}: {problem['msg']}")
        return "\n".join(lines)
    field = re.search(r'field "(\w+)"', str(error))
    name = f"MEDGRAPH_{field.group(1).upper()}" if field else "a MEDGRAPH_ variable"
    return (
        f"invalid setting {name}: {error} (list settings take a JSON list, "
        'e.g. \'["/data/a", "/data/b"]\')'
    )
