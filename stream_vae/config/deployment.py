"""The deployment's settings: what changes without a new model (devices, threads, bounds,
episode shaping, topics, drift watching, the registry)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field, SecretStr, field_validator, model_validator

from .model import FROZEN

__all__ = [
    "AlertSettings",
    "DriftSettings",
    "KafkaSettings",
    "LogSettings",
    "RegistrySettings",
    "RouteSettings",
    "ServiceSettings",
]


class ServiceSettings(BaseModel):
    """The streaming loop (see stream_vae.service)."""

    model_config = FROZEN

    max_batch_records: int = Field(2048, ge=1, le=1_000_000, description="records per batch")
    max_wait_ms: int = Field(
        50,
        ge=1,  # 0: an idle fetch returns at once and the loop spins a core asking again
        le=60_000,
        description="longest wait to fill a batch (≥ 1: an idle fetch must block)",
    )
    shutdown_timeout_s: float = Field(30.0, gt=0, description="bound on the final drain")
    device: str = "auto"
    # auto: ONNX Runtime on the CPU where the onnx extra is installed (1.2-3x eager PyTorch
    # there, docs/operations.md), PyTorch on a GPU or where ORT cannot run the model (sampled
    # latent modes, a bf16/fp16 or compile setting), eager PyTorch otherwise; precision int8
    # takes ORT. Logged at start.
    backend: Literal["auto", "torch", "onnx"] = "auto"
    # the scoring process's torch threads (training and the retrain job have their own)
    torch_threads: int = Field(2, ge=1, le=256)
    # Series held: evict one silent this long (stream time), and hold at most this many (least
    # recently seen evicted first); None turns a bound off. Bounded by default: unbounded, 200k
    # one-record series grew the process by 240 MiB and each pinned its partition's commit.
    # At the defaults (W 32, d 8, ema_beta 0.5) a series costs ~4 kB over every part of the
    # state, so 100k series ~0.4 GB (docs/operations.md, "Memory per series").
    idle_ttl_s: float | None = Field(86_400.0, gt=0, description="evict series silent this long")
    max_series: int | None = Field(100_000, ge=1, description="LRU bound on series held")
    seed: int = Field(0, description="seeds the drift monitor's and the reservoir's sampling")
    # Taking a partition over replays its records from the stored replay start up to the
    # committed offset (stream_vae.service.checkpoint). An episode open for days pins the start
    # that far back: the replay is cut to this many records per partition (its state is then
    # rebuilt in part, and stream_vae_replay_truncated_total{reason="bounded"} counts it).
    max_replay_records: int | None = Field(
        1_000_000, ge=1, description="longest replay per partition taken over"
    )
    # How often a partition's replay start is written to kafka.state_topic at most; a start
    # held back is still valid (it only makes a replay longer), so this trades writes for replay.
    checkpoint_interval_s: float = Field(1.0, ge=0, description="replay-start writes, at most")
    # How long taking partitions over waits for their replay starts; past it the state topic
    # counts as unreadable and the last max_replay_records of each partition are replayed.
    state_read_timeout_s: float = Field(30.0, gt=0, description="replay-start read, at most")
    # A record this far ahead of the wall clock (ts=1e300, epoch ms sent as s), or this far
    # ahead of its series' newest point, is dead-lettered (implausible_timestamp): let through,
    # it moves stream time so far that every other series is evicted as idle. None: no check
    # (e.g. a simulation that runs ahead of the clock).
    max_future_s: float | None = Field(86_400.0, gt=0, description="ts ahead of the wall clock")
    max_ts_jump_s: float | None = Field(
        30 * 86_400.0, gt=0, description="ts ahead of the series' newest point"
    )
    # /metrics, /healthz, /readyz, /accounting; loopback unless exposed on purpose. None: off.
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = Field(9108, ge=0, le=65535, description="0: any free port")
    # Autocast dtype of the forward pass (bf16 also runs on the CPU; fp16 needs CUDA) and
    # optional torch.compile. fp32 is the reference of the parity bound (docs/operations.md).
    # int8: ONNX Runtime's dynamic quantisation of the weights, on the CPU (docs/operations.md
    # has its speed and its bound on the scores).
    precision: Literal["fp32", "bf16", "fp16", "int8"] = "fp32"
    compile: bool = False


class LogSettings(BaseModel):
    """The process's log lines (see :mod:`stream_vae.logs`)."""

    model_config = FROZEN

    # None: the command's own default (INFO for `run`, the service; WARNING for one-shot
    # commands, whose output is what they print). `-v` on the command line means INFO.
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] | None = None
    # json: one object per line (ts, level, logger, message and, where they apply, series,
    # topic, partition, offset, model_version) for log pipelines; text: for a terminal.
    format: Literal["text", "json"] = "text"

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, v: object) -> object:
        return v.upper() if isinstance(v, str) else v


class AlertSettings(BaseModel):
    """How crossings of the threshold become alert episodes (see
    :class:`stream_vae.scoring.episodes.EpisodeTracker`): the deployment's choice, applied to
    every model it serves."""

    model_config = FROZEN

    hysteresis: float = Field(0.9, gt=0, le=1, description="close below this × threshold")
    close_after: int = Field(3, ge=1, description="windows below before an episode closes")
    cooldown: int = Field(0, ge=0, description="windows after a close before a new open")
    top_k: int = Field(3, ge=1, description="features named in an alert")
    # "static": every row meets the model's calibrated threshold. "dspot": each series' own
    # threshold follows its recent normal scores (stream_vae.scoring.spot), starting from the
    # calibration, never below threshold_floor × it nor above threshold_ceiling × it.
    threshold_mode: Literal["static", "dspot"] = "static"
    threshold_depth: int = Field(
        200, ge=10, description="windows of the streaming level's memory (the tail: 10×)"
    )
    threshold_floor: float = Field(
        0.5, gt=0, le=1, description="lowest streaming threshold, × calibrated"
    )
    threshold_ceiling: float = Field(
        3.0, ge=1, description="highest streaming threshold, × calibrated"
    )
    # The tail probability the streaming threshold sits at, × the model's target_fpr. A window
    # over the threshold is not a normal point alerting: scores above it come in runs, which
    # open one episode, and close_on_settle ends an episode with the data. So at 1 the points
    # that alert run below the target (ASD: 0.1-0.2× on the median server); a factor above 1
    # brings them back to it. target_fpr × this must stay below 0.5.
    threshold_tail_factor: float = Field(
        1.0, gt=0, le=100, description="streaming threshold's tail probability, × target_fpr"
    )
    # An episode also ends when the data does: after close_after windows whose newest point
    # looks normal again (its error below the 0.99 quantile of the validation windows'), not
    # only when the window's score lets go of the anomaly (W windows later). A model trained
    # before this existed has no such level and closes on its score alone.
    close_on_settle: bool = False
    settle_factor: float = Field(
        1.0, gt=0, description="settled below this × the stored newest-point level"
    )
    # The novelty gate (stream_vae.scoring.novelty): an episode opens only where the smoothed
    # score rises above the series' maximum of its previous novelty_window windows by at least
    # this share of its peak (0 = off: every crossing opens one). A recurring high alerts once
    # per novelty_window, not each time; an excursion whose rise reaches novelty_censor (0 =
    # off) stays out of that maximum, so one anomaly does not hide the next.
    novelty_gate: float = Field(0.0, ge=0, le=1)
    novelty_window: int = Field(2000, ge=10, description="windows a rise must beat (the gate)")
    novelty_censor: float = Field(0.4, ge=0, le=1)
    # Data-quality alerts that do not ask the model (stream_vae.scoring.quality), each its own
    # alert kind; a model trained before they existed has no reference for them and gives none.
    quality_kinds: tuple[Literal["flatline", "out_of_range", "stale"], ...] = (
        "flatline",
        "out_of_range",
    )
    # stale (opt-in): a series silent for this many times its usual interval, in stream time
    # (the newest timestamp any series reached). Off by default: a consumer that reads its
    # partitions at uneven pace (a backlog on one) makes the lagging partition's series look
    # silent; turn it on where the stream is consumed near real time.
    stale_factor: float = Field(5.0, gt=1)
    # "stream": silent by stream time (reproducible on replay; a fleet that falls silent at
    # once raises nothing). "wall": silent since its last record arrived, by the service's
    # clock, checked while the input is idle too, so a whole fleet falling silent is seen;
    # a rebalance closes these episodes (reason "revoked") and the next owner re-opens them.
    stale_clock: Literal["stream", "wall"] = "stream"
    flatline_ratio: float = Field(
        0.05, gt=0, lt=1, description="a feature moving less than this × its training movement"
    )
    flatline_windows: int = Field(5, ge=1, description="flat windows in a row before an alert")
    range_margin: float = Field(
        0.5, ge=0, description="how far beyond the training range, in ranges, is out of range"
    )
    # Alert shaping (stream_vae.scoring.shaping): a fleet incident when this share of the active
    # series (and at least incident_min_series) open within incident_window_s; 0 = no incidents.
    incident_share: float = Field(0.5, ge=0, le=1)
    incident_window_s: float = Field(900.0, gt=0)
    incident_min_series: int = Field(5, ge=2)
    # A series publishes at most this many opens an hour (stream time); 0 = no budget.
    max_opens_per_hour: int = Field(0, ge=0)
    # Episodes grouped into recurring kinds by attribution (stream_vae.scoring.clusters): an
    # episode joins a kind at this cosine similarity; 0 = no clustering.
    cluster_similarity: float = Field(0.85, ge=0, le=1)


# Kafka's rule for a topic name (org.apache.kafka.common.internals.Topic): the broker refuses any
# other, and a client asked for one retries forever (an error logged every 100 ms).
_TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]{1,249}")


def _topic_name(name: str) -> str:
    if not _TOPIC_NAME.fullmatch(name) or name in (".", ".."):
        raise ValueError(
            "a Kafka topic name is 1 to 249 characters of a-z A-Z 0-9 . _ -, and not . or .."
        )
    return name


TopicName = Annotated[str, AfterValidator(_topic_name)]


class KafkaSettings(BaseModel):
    """Where the service reads and writes, and how it authenticates (stream_vae.service.kafka)."""

    model_config = FROZEN

    bootstrap_servers: str = "127.0.0.1:9092"
    client_id: str = "stream-vae"
    group_id: str = "stream-vae"
    input_topics: tuple[TopicName, ...] = ("telemetry",)
    input_pattern: str | None = Field(None, description="Python regex; replaces input_topics")
    alert_topic: TopicName = "telemetry.alerts"
    dead_letter_topic: TopicName = "telemetry.dead-letter"
    model_events_topic: TopicName = "stream-vae.model-events"  # drift, retrain, promote, reject
    # People's verdicts on alerts (stream_vae.lifecycle.feedback); None: no feedback is read.
    feedback_topic: TopicName | None = None
    # Each partition's replay start, keyed by group/topic/partition: internal, created by the
    # service when missing (one partition, cleanup.policy=compact); see service.checkpoint.
    state_topic: TopicName = "stream-vae.state"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_password: SecretStr | None = None
    # Create missing topics at start-up (off by default: production topics are provisioned).
    auto_create_topics: bool = False
    topic_partitions: int = Field(8, ge=1)
    replication_factor: int = Field(1, ge=1)
    # Idempotent produce needs InitProducerId, which some Kafka-compatible brokers lack.
    enable_idempotence: bool = False
    max_message_bytes: int = Field(1 << 20, ge=1024, description="larger values: dead letter")
    # A member silent this long leaves the group. Some brokers hold a join for half of it.
    session_timeout_ms: int = Field(10_000, ge=1000, le=300_000)
    # Bound what the consumer buffers ahead of the service (it fetches a partition again only
    # once the service took its buffered records): at most fetch_max_bytes in flight per broker
    # and max_partition_fetch_bytes held per assigned partition.
    fetch_max_bytes: int = Field(16 << 20, ge=1024, description="one fetch response, at most")
    max_partition_fetch_bytes: int = Field(1 << 20, ge=1024, description="per partition fetch")
    # The input messages' format (stream_vae.core.formats): the contract's JSON; Avro or
    # Protobuf, by schema id from a schema registry (Confluent wire format) or, with a local
    # schema and no registry, by that one schema; JSON framed by the registry's wire format.
    value_format: Literal["json", "avro", "protobuf", "json_schema"] = "json"
    schema_registry_url: str | None = Field(None, description="e.g. http://registry:8081")
    avro_schema_file: Path | None = Field(None, description="an .avsc: Avro without a registry")
    # Protobuf without a registry: a FileDescriptorSet (protoc --include_imports
    # --descriptor_set_out=FILE) and the full name of the message type in it.
    protobuf_descriptor_file: Path | None = Field(None, description="a FileDescriptorSet")
    protobuf_message: str | None = Field(None, description="e.g. telemetry.v1.Reading")
    # Where a record's parts are when its field names are not the contract's. feature_fields
    # maps each model feature to its own top-level field (then values_field is not read).
    series_id_field: str = Field("series_id", min_length=1)
    ts_field: str = Field("ts", min_length=1)
    values_field: str = Field("values", min_length=1)
    feature_fields: dict[str, str] = Field(default_factory=dict)

    @field_validator("input_pattern")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        # The consumer compiles it at subscribe, after start-up: check it here.
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
        return v

    @model_validator(mode="after")
    def _sasl_complete(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL"):
            missing = [
                n
                for n in ("sasl_mechanism", "sasl_username", "sasl_password")
                if getattr(self, n) is None
            ]
            if missing:
                raise ValueError(f"{self.security_protocol} needs {', '.join(missing)}")
        if not self.input_topics and self.input_pattern is None:
            raise ValueError("set input_topics or input_pattern")
        if self.value_format == "json_schema" and self.schema_registry_url is None:
            raise ValueError("value_format json_schema needs schema_registry_url")
        if self.value_format == "avro" and (self.schema_registry_url is None) == (
            self.avro_schema_file is None
        ):
            raise ValueError("value_format avro needs schema_registry_url or avro_schema_file")
        local_proto = self.protobuf_descriptor_file is not None
        if (
            self.value_format == "protobuf"
            and (self.schema_registry_url is not None) == local_proto
        ):
            raise ValueError(
                "value_format protobuf needs schema_registry_url or protobuf_descriptor_file"
            )
        if local_proto and self.protobuf_message is None:
            raise ValueError("protobuf_descriptor_file needs protobuf_message (its full name)")
        return self


class DriftSettings(BaseModel):
    """The drift monitor (stream_vae.lifecycle.drift): KSWIN over thinned raw scores and inputs."""

    model_config = FROZEN

    enabled: bool = True
    # Per test. The KS test runs at every sample once the window is full, so the per-sample
    # alpha is spent ~window_size/stat_size times per independent window. 1e-4 with the
    # 2-of-3-within-100 rule below: ≤ 1 event per 100k stationary scores in every one of 100
    # seeds (within 300 samples: 3 events in 1 seed of 100); tests/test_drift.py checks 25k.
    alpha: float = Field(1e-4, gt=0, lt=1)
    window_size: int = Field(100, ge=4, le=100_000)
    stat_size: int = Field(30, ge=2)
    n_detectors: int = Field(3, ge=1, le=16, description="KSWINs fed round-robin")
    min_detections: int = Field(2, ge=1, description="distinct detectors that must agree")
    within_samples: int = Field(100, ge=1, description="... within this many samples")
    thin_every: int | None = Field(
        None, ge=1, description="one sample per series every k windows; None: W / stride"
    )
    max_samples_per_batch: int = Field(64, ge=1, description="bound on KS tests per batch")
    input_drift: bool = Field(True, description="also watch each feature's window mean")
    min_interval_s: float = Field(3600.0, ge=0, description="stream seconds between events")

    @model_validator(mode="after")
    def _sizes(self) -> DriftSettings:
        # river only raises at the first full window, hours into a run: check it here.
        if self.stat_size >= self.window_size / 2:
            raise ValueError(
                f"stat_size ({self.stat_size}) must be < window_size / 2 ({self.window_size / 2:g})"
            )
        if self.min_detections > self.n_detectors:
            raise ValueError(
                f"min_detections ({self.min_detections}) > n_detectors ({self.n_detectors})"
            )
        return self


class RegistrySettings(BaseModel):
    """Model versions on disk (see stream_vae.storage.registry)."""

    model_config = FROZEN

    root: Path | None = Field(None, description="registry directory; None: no hot swap")
    poll_s: float = Field(2.0, gt=0, description="how often the service checks for a promotion")


class RouteSettings(BaseModel):
    """`stream-vae route`: alerts from the alert topic to people's tools (see
    stream_vae.service.route). At least one receiver URL is needed to run it."""

    model_config = FROZEN

    # An Alertmanager (or a compatible receiver): its base URL; alerts go to /api/v2/alerts.
    alertmanager_url: str | None = Field(None, description="e.g. http://alertmanager:9093")
    # Any JSON webhook: each batch of alert messages is POSTed as {"alerts": [...]}.
    webhook_url: str | None = Field(None, description="receives {'alerts': [messages]}")
    # Its own consumer group: its offsets are committed only once every receiver took a batch.
    group_id: str = Field("stream-vae-route", min_length=1)
    timeout_s: float = Field(10.0, gt=0, description="one HTTP request, at most")
    # A receiver that is down or answers 5xx/408/429 is retried, doubling the wait up to the
    # cap, for as long as it takes: nothing is committed, so nothing is lost. Any other 4xx
    # is the request's fault and would fail again: it is logged and the batch goes on.
    backoff_initial_s: float = Field(0.5, gt=0)
    backoff_max_s: float = Field(30.0, gt=0)
    # Alertmanager drops a firing alert at its endsAt: an open is sent as firing this long
    # (its close resolves it sooner). Longer than the longest episode you expect.
    open_ttl_s: float = Field(86_400.0, gt=0)
    kinds: tuple[str, ...] = Field((), description="alert kinds routed; empty: all")
    max_batch: int = Field(100, ge=1, le=10_000, description="alerts per delivery")
