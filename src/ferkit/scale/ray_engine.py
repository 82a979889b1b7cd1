"""``ferkit predict --engine ray``: the same prediction on a Ray cluster (Ray Data), or on this machine's cores.

The inputs are listed once (:mod:`ferkit.scale.listing`) into shards: runs of images, and video segments.
Ray Data hands the shard numbers to a pool of actors; each actor keeps one Recognizer loaded, reads its
shard's items from the listing, reads and decodes those inputs itself (so each input keeps its own error
boundary), classifies their faces in batches and writes the shard's rows as one Parquet file, renamed into
place when whole. A rerun of the same command skips finished shards. An actor that dies is restarted by Ray
and its shard retried, :data:`ACTOR_RETRIES` times; a shard that fails every try is left out of the run, which
goes on and says so.
"""
from __future__ import annotations

import dataclasses
import os
import posixpath
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, TextIO

from ferkit.engine.options import RecognizerOptions
from ferkit.errors import FerkitError
from ferkit.scale import listing
from ferkit.scale.listing import Item

RAY_EXTRA = 'the Ray engine needs Ray Data: pip install "ferkit[ray]"'
RAY_LOG = "_ray.log"  # what Ray's core printed during a run to a local folder
SUMMARY_FIELDS = ("shard", "items", "inputs", "faces", "no_face", "errors", "skipped")


def import_ray() -> Any:
    """The ``ray`` module with Ray Data, or a FerkitError saying how to install it."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise FerkitError(RAY_EXTRA) from None
    return ray


@dataclass(frozen=True)
class ModelBytes:
    """A model file and its int8 companion as bytes: every actor, on any node, loads the same model."""

    name: str
    data: bytes
    int8: bytes | None
    sha256: str
    int8_sha256: str | None
    meta: Any  # its ModelMeta, read once on the driver

    @classmethod
    def read(cls, model: str | Path) -> ModelBytes:
        from ferkit.engine import modelfile
        from ferkit.engine.predict import int8_companion

        path = modelfile.model_path(model)
        _, meta = modelfile.load(path)  # checked here, before Ray starts or a folder is made
        companion = int8_companion(path)
        data = path.read_bytes()
        int8 = companion.read_bytes() if companion is not None else None
        return cls(path.name, data, int8, listing.bytes_sha256(data), int8 and listing.bytes_sha256(int8), meta)

    def describe(self) -> dict[str, Any]:
        return {"name": self.meta.name, "file": self.name, "sha256": self.sha256, "int8_sha256": self.int8_sha256}


class ShardPredictor:
    """A Ray Data actor: one Recognizer kept loaded; each call takes listing rows (one per shard). With a
    ``folder`` it writes each shard's Parquet file there and returns one summary row per shard; without, it
    returns the shards' result rows (the flat schema of :func:`ferkit.engine.schema.csv_header`)."""

    def __init__(self, model: list, options: dict[str, Any], device: str, threads: int, folder: str | None,
                 stride: int, smooth: float):
        import ray

        from ferkit.engine.predict import Recognizer, int8_companion_path
        from ferkit.engine.runtime import resolve_device

        files: ModelBytes = ray.get(model[0])
        # The files live only while the model is read into memory: an actor Ray ends by killing its process
        # never runs a finaliser, and one folder kept for the actor's life was left behind by every run.
        with tempfile.TemporaryDirectory(prefix="ferkit-model-") as loading:
            path = Path(loading) / files.name
            path.write_bytes(files.data)
            if files.int8 is not None:
                int8_companion_path(path).write_bytes(files.int8)
            self.recognizer = Recognizer.load(path, RecognizerOptions(**options),
                                              device=str(resolve_device(device)), threads=threads, workers=threads)
        self.classes = self.recognizer.classes
        self.stride, self.smooth = stride, smooth
        self.fs, self.folder = (listing.open_folder(folder) if folder is not None else (None, None))
        self.listing = listing.ListingReader(self.fs, self.folder) if folder is not None else None

    def __call__(self, batch: Any) -> Any:
        """Rows with a ``shard`` column: with a folder, each shard's items are read from its listing and the
        shard written there; without, the rows carry their items (the listing's columns) and their results
        come back."""
        import pyarrow as pa

        from ferkit.engine.schema import arrow_table, csv_rows

        rows = batch.to_pylist()
        if self.folder is None:
            out = [row for shard in rows for result in self.results(listing.shard_items(shard))
                   for row in csv_rows(result.to_record(), self.classes)]
            return arrow_table(out, self.classes)
        summaries = [self.write_shard(row["shard"], self.listing.items(row["shard"])) for row in rows]
        return pa.table({name: [s[name] for s in summaries] for name in SUMMARY_FIELDS})

    def write_shard(self, shard: int, items: list[Item]) -> dict[str, Any]:
        """Predict one shard and write its part file atomically (or skip it when a whole one is there)."""
        from ferkit.engine.sources import ResultWriter, RunSummary

        summary = RunSummary()
        target = listing.part_path(self.folder, shard)
        if listing.shard_done(self.fs, target):
            return self._summary(shard, items, summary, skipped=True)
        temp = listing.temp_name(self.folder, posixpath.basename(target))
        try:
            with self.fs.open_output_stream(temp) as stream:
                writer = ResultWriter(stream, "parquet", self.classes)
                for result in self.results(items):
                    writer.write(result)
                    summary.add(result)
                writer.close()
            self.fs.move(temp, target)
        except BaseException:
            try:
                self.fs.delete_file(temp)
            except OSError:
                pass
            raise
        return self._summary(shard, items, summary, skipped=False)

    @staticmethod
    def _summary(shard: int, items: list[Item], summary: Any, skipped: bool) -> dict[str, Any]:
        """One shard's row of :data:`SUMMARY_FIELDS`, its counts those of ``summary`` (a RunSummary)."""
        return {"shard": shard, "items": len(items), "inputs": summary.inputs, "faces": summary.faces,
                "no_face": summary.no_face, "errors": summary.errors, "skipped": skipped}

    # -- reading ----------------------------------------------------------------------------------
    def results(self, items: list[Item]) -> Iterator[Any]:
        """The results of a shard's items in order: its images in batches, each video segment frame by frame."""
        batch = self.recognizer.batch_size
        run: list[Item] = []
        for item in [*items, None]:
            if item is not None and item.kind != "video":
                run.append(item)
                if len(run) < batch:
                    continue
            if run:
                yield from self.images(run)
                run = []
            if item is not None and item.kind == "video":
                yield from self.video(item)

    def images(self, items: list[Item]) -> list[Any]:
        from ferkit.engine.predict import Result

        inputs, errors = [], {}
        for i, item in enumerate(items):
            if item.error is not None:
                errors[i] = item.error
                continue
            try:
                inputs.append((i, self.read(item.location) if listing.is_uri(item.location) else item.location))
            except (OSError, ValueError) as e:
                errors[i] = f"{item.source}: cannot be read ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
        found = self.recognizer([data for _, data in inputs], keep_images=False) if inputs else []
        by_index = dict(zip((i for i, _ in inputs), found))
        out = []
        for i, item in enumerate(items):
            result = by_index.get(i)
            if result is None:
                result = Result(item.source, status="error", error=errors[i], model=self.recognizer.meta.name)
            elif result.error:
                # Named as the user named it, not by the actor's absolute path or "<input N>".
                result.error = result.error.replace(result.source, item.source, 1)
            result.source = item.source
            out.append(result)
        return out

    def read(self, uri: str) -> bytes:
        fs, path = listing.open_folder(uri)
        with fs.open_input_stream(path) as stream:
            return stream.read()

    def video(self, item: Item) -> Iterator[Any]:
        """A video segment's frame results, tracks numbered from segment x TRACK_SPAN; errors as one result."""
        from ferkit.engine.predict import FaceResult, Result
        from ferkit.engine.sources import Source, iter_video

        offset = (item.segment or 0) * listing.TRACK_SPAN
        frames = 0
        with tempfile.TemporaryDirectory(prefix="ferkit-video-") as local:
            try:
                location = item.location
                if listing.is_uri(location):  # OpenCV reads files: the video is copied here first
                    location = str(Path(local) / posixpath.basename(location))
                    fs, path = listing.open_folder(item.location)
                    with fs.open_input_stream(path) as stream, open(location, "wb") as copy:
                        shutil.copyfileobj(stream, copy, 1 << 20)
                source = Source("video", location)
                for _, _, result in iter_video(self.recognizer, source, self.stride, smooth=self.smooth,
                                               start=item.start or 0, stop=item.stop):
                    frames += 1
                    result.source = item.source
                    result.faces = [FaceResult(f.box, f.probs, f.score, f.eyes, f.track + offset)
                                    for f in result.faces]
                    yield result
            except (OSError, FerkitError) as e:
                text = str(e).replace(str(location), item.source)
                yield Result(item.source, status="error", error=text)
                return
        if frames == 0:
            yield Result(item.source, status="error", error=f"{item.source}: no frames could be read")


@dataclass(frozen=True)
class Plan:
    """How many actors, with how many cores (threads) and GPUs each."""

    actors: int
    threads: int
    gpus: float


def plan(ray: Any, actors: int | None, threads: int | None, device: str) -> Plan:
    """Actors and their threads on the running cluster: by default as many actors as its cores hold at
    ``threads`` each (default 1), or one per GPU when ``device`` is cuda."""
    resources = ray.cluster_resources()
    cpus = int(resources.get("CPU", 1))
    gpus = int(resources.get("GPU", 0))
    gpu = str(device).startswith("cuda")
    if gpu and gpus == 0:
        raise FerkitError(f"--device {device}: the Ray cluster has no GPU")
    threads = threads or 1
    if threads > cpus:
        raise FerkitError(f"--threads-per-actor {threads}: the Ray cluster has {cpus} CPU(s)")
    if actors is None:
        actors = gpus if gpu else max(1, cpus // threads)
    # The pool is of a fixed size: actors the cluster cannot place would be waited for without end.
    if actors * threads > cpus:
        raise FerkitError(f"--actors {actors} x --threads-per-actor {threads} needs {actors * threads} CPUs; the Ray "
                          f"cluster has {cpus}: ask for fewer, or add nodes first")
    if gpu and actors > gpus:
        raise FerkitError(f"--actors {actors} with --device {device} needs a GPU each; the Ray cluster has {gpus}")
    return Plan(actors, threads, 1.0 if gpu else 0.0)


@contextmanager
def native_log_to(path: str | None) -> Iterator[TextIO]:
    """Lines Ray's C++ core writes straight to this process's stderr (file descriptor 2), such as a notice
    for every actor pool, go to the file ``path`` while inside; yields a stream to the terminal's stderr for
    ferkit's own bar and messages. ``path`` None: nothing redirected."""
    if path is None:
        yield sys.stderr
        return
    sys.stderr.flush()
    saved = os.dup(2)
    console = os.fdopen(os.dup(saved), "w", buffering=1, errors="backslashreplace")
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 2)
    os.close(log)
    try:
        yield console
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        console.close()


class RayRun:
    """Ray started for one run (and shut down after it) unless this process is already connected to one."""

    def __init__(self, address: str | None):
        import logging

        self.ray = import_ray()
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # its start/finish notices; ferkit has a bar
        self.started = False
        if not self.ray.is_initialized():
            from ferkit.detect.cores import usable_cores

            local = {} if address else {"num_cpus": usable_cores()}
            try:
                self.ray.init(address=address, include_dashboard=False, log_to_driver=False,
                              logging_level=logging.ERROR, configure_logging=True, **local)
            except (ConnectionError, ValueError, RuntimeError) as e:
                raise FerkitError(f"--address {address}: cannot connect to a Ray cluster ({e})") from None
            self.started = True
        context = self.ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # ferkit's own bar counts inputs
        context.print_on_execution_start = False

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


ACTOR_RETRIES = 3  # restarts of a dead actor, and retries of its shard: an input that crashes the decoder
# every time (a native fault) must end the run with an error, not restart actors for ever (Ray Data's default)


def _map(ray: Any, dataset: Any, model_ref: Any, options: RecognizerOptions, device: str, plan: Plan,
         folder: str | None, stride: int, smooth: float) -> Any:
    import warnings

    with warnings.catch_warnings():
        # Ray 2.60 warns that restart options passed this way will move; they are the way it takes them.
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
        return dataset.map_batches(
            ShardPredictor, batch_size=1, batch_format="pyarrow",
            # One shard at a time per actor: shards queued behind one whose input kills the actor would
            # spend their retries on its deaths and be lost with it.
            compute=ray.data.ActorPoolStrategy(size=plan.actors, max_tasks_in_flight_per_actor=1),
            fn_constructor_kwargs={"model": [model_ref], "options": dataclasses.asdict(options), "device": device,
                                   "threads": plan.threads, "folder": folder, "stride": stride, "smooth": smooth},
            num_cpus=plan.threads, num_gpus=plan.gpus or None,
            max_restarts=ACTOR_RETRIES, max_task_retries=ACTOR_RETRIES)


def predict_dataset(sources: list[str], model: str | Path = "default", options: RecognizerOptions | None = None, *,
                    device: str = "cpu", stride: int = 1, smooth: float = 0.0, actors: int | None = None,
                    threads_per_actor: int | None = None, shard_size: int = listing.SHARD_SIZE,
                    segment_frames: int = listing.SEGMENT_FRAMES, inputs_from: str | None = None) -> Any:
    """A lazy ``ray.data.Dataset`` of the results of ``sources`` (paths, folders, URIs): one row per face, or
    per input without a face, with the columns of ``ferkit predict --format csv``. Ray is started here (on
    this machine) unless the process is connected to a cluster already (``ray.init(address=...)``)::

        ds = predict_dataset(["s3://bucket/photos"], actors=8)
        ds.write_parquet("s3://bucket/expressions")
    """
    ray = import_ray()
    options = options or RecognizerOptions()
    _check(stride, smooth, shard_size, segment_frames, actors, threads_per_actor)
    if inputs_from is not None:
        listing.check_input_list(inputs_from)
    files = ModelBytes.read(model)
    import pyarrow as pa

    numbered = enumerate(listing.shards(listing.list_inputs(sources, segment_frames, inputs_from), shard_size))
    table = pa.table(listing.shard_rows(numbered), schema=listing.listing_schema())
    if not ray.is_initialized():
        RayRun(None)
    chosen = plan(ray, actors, threads_per_actor, device)
    dataset = ray.data.from_arrow(table)
    return _map(ray, dataset, ray.put(files), options, device, chosen, None, stride, smooth)


def _check(stride: int, smooth: float, shard_size: int, segment_frames: int, actors: int | None,
           threads: int | None) -> None:
    from ferkit.engine.options import check_options

    check_options(stride=stride, smooth=smooth)
    for name, value in (("shard_size", shard_size), ("segment_frames", segment_frames),
                        ("actors", 1 if actors is None else actors), ("threads_per_actor", threads or 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            flag = "--" + name.replace("_", "-")
            raise FerkitError(f"{flag} must be a whole number >= 1, got {value!r}")


@dataclass
class RunCounts:
    """What a run to a folder did: shards and inputs this time, shards already done before."""

    folder: str
    items: int = 0            # inputs listed (images and video segments)
    shards: int = 0
    skipped: int = 0          # shards whose part file was there already
    inputs: int = 0           # results written this time: images and video frames
    faces: int = 0
    no_face: int = 0
    errors: int = 0
    seconds: float = 0.0      # wall time, Ray's start-up included
    reported: int = 0         # shards whose actor answered (written or skipped)
    failed: int = 0           # shards left without a part file: their actor died on every try

    def line(self) -> str:
        rate = self.inputs / max(self.seconds, 1e-9)
        done = f"; {self.skipped} shard(s) were done already" if self.skipped else ""
        failed = (f"; {self.failed} shard(s) failed (a worker died on each try: an input there crashes it), their "
                  "inputs are not in the results: run the same command to try them again") if self.failed else ""
        return (f"{self.inputs} inputs (images and frames), {self.faces} faces, {self.no_face} without a face, "
                f"{self.errors} errors; {rate:.1f} inputs/s in {self.seconds:.1f} s, start-up included{done}; "
                f"results in {self.folder} ({self.shards} shards){failed}")


def predict_to_folder(sources: list[str], out: str, model: str | Path = "default",
                      options: RecognizerOptions | None = None, *, device: str = "cpu", stride: int = 1,
                      smooth: float = 0.0, address: str | None = None, actors: int | None = None,
                      threads_per_actor: int | None = None, shard_size: int = listing.SHARD_SIZE,
                      segment_frames: int = listing.SEGMENT_FRAMES, progress: bool = True,
                      command: str | None = None, inputs_from: str | None = None) -> RunCounts:
    """Predict ``sources`` (and the inputs the lines of the file ``inputs_from`` name) on Ray into the folder
    ``out`` (a path or URI): Parquet shards, a listing and a manifest. A folder that holds a run already is
    resumed, when the model, settings and inputs are the same."""
    import pyarrow.fs as pafs

    import ferkit
    from ferkit.engine.schema import csv_header

    options = options or RecognizerOptions()
    _check(stride, smooth, shard_size, segment_frames, actors, threads_per_actor)
    import_ray()
    listed = None if inputs_from is None else {"path": str(Path(inputs_from).absolute()),
                                               "sha256": listing.check_input_list(inputs_from)}
    files = ModelBytes.read(model)
    fs, folder = listing.open_folder(out)
    manifest = {"ferkit": ferkit.__version__, "model": files.describe(),
                "options": {**dataclasses.asdict(options), "device": device, "stride": stride, "smooth": smooth},
                "sources": list(sources), "inputs_from": listed, "shard_size": shard_size,
                "segment_frames": segment_frames}
    old = _prepare_folder(fs, folder, out)
    if old is not None:
        listing.check_resume(old, manifest, out)
        manifest = old
    counts = RunCounts(out)
    start = time.perf_counter()
    if old is None:
        items, shards, digest = listing.write_listing(
            fs, folder, listing.list_inputs(sources, segment_frames, inputs_from), shard_size)
        manifest = {**manifest, "items": items, "shards": shards, "listing_sha256": digest,
                    "command": command, "columns": csv_header(list(files.meta.classes))}
        listing.write_manifest(fs, folder, manifest)
    listing.remove_temps(fs, folder)
    counts.items, counts.shards = manifest["items"], manifest["shards"]
    local = folder if isinstance(fs, pafs.LocalFileSystem) else None
    with native_log_to(local and posixpath.join(local, RAY_LOG)) as console:
        _run(fs, folder, out, files, options, device, stride, smooth, address, actors, threads_per_actor,
             counts, progress, console)
    counts.seconds = time.perf_counter() - start
    return counts


def _run(fs: Any, folder: str, out: str, files: ModelBytes, options: RecognizerOptions, device: str, stride: int,
         smooth: float, address: str | None, actors: int | None, threads: int | None, counts: RunCounts,
         progress: bool, console: TextIO) -> None:
    run = RayRun(address)
    try:
        ray = run.ray
        chosen = plan(ray, actors, threads, device)
        # Only shard numbers go through Ray (no read task, which would wait for a CPU the actors hold), one
        # block each; each actor reads its shard's items from the listing in the folder.
        dataset = ray.data.from_items([{"shard": n} for n in range(counts.shards)],
                                      override_num_blocks=max(1, counts.shards))
        # A shard whose actor died on every try (an input that crashes a decoder) is left out, and the run
        # goes on: its part file is missing, so a rerun tries it again.
        dataset.context.max_errored_blocks = -1
        results = _map(ray, dataset, ray.put(files), options, device, chosen, folder, stride, smooth)
        _collect(results, counts, progress, console)
        counts.failed = counts.shards - counts.reported
    except KeyboardInterrupt:
        raise FerkitError(f"interrupted; finished shards are kept in {out}: run the same command to go on") from None
    except FerkitError:
        raise
    except Exception as e:  # a shard that failed past Ray's retries, a lost cluster
        text = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise FerkitError(f"the Ray run stopped ({text}); finished shards are kept in {out}: "
                          "run the same command to go on") from None
    finally:
        run.close()


def _collect(results: Any, counts: RunCounts, progress: bool, console: TextIO) -> None:
    """Run the dataset, counting each shard's summary as it lands; a bar over the listed inputs."""
    from tqdm.auto import tqdm

    with tqdm(total=counts.items, desc="inputs", unit="input", disable=not progress, file=console) as bar:
        for batch in results.iter_batches(batch_size=None, batch_format="pyarrow"):
            for row in batch.to_pylist():
                bar.update(row["items"])
                counts.reported += 1
                counts.skipped += bool(row["skipped"])
                for name in ("inputs", "faces", "no_face", "errors"):
                    setattr(counts, name, getattr(counts, name) + row[name])


def _prepare_folder(fs: Any, folder: str, out: str) -> dict[str, Any] | None:
    """The manifest of the run ``folder`` holds (None: a new run, the folder made or emptied of an
    interrupted listing); refuses a folder that holds anything else."""
    import pyarrow.fs as pafs

    info = fs.get_file_info(folder)
    if info.type == pafs.FileType.File:
        raise FerkitError(f"--out {out}: a file; the Ray engine writes a folder of Parquet shards")
    if info.type == pafs.FileType.NotFound:
        try:
            fs.create_dir(folder, recursive=True)
        except OSError as e:
            raise FerkitError(f"--out {out}: cannot create the folder ({e})") from None
        return None
    manifest = listing.read_manifest(fs, folder)
    if manifest is not None:
        return manifest
    names = [posixpath.basename(f.path) for f in fs.get_file_info(pafs.FileSelector(folder))]
    leftovers = [n for n in names if not (n.startswith(listing.TEMP_PREFIX) and n.endswith(listing.TEMP_SUFFIX))
                 and n != listing.LISTING]
    if leftovers:
        raise FerkitError(f"--out {out}: holds files that are not a ferkit run ({', '.join(sorted(leftovers)[:3])}); "
                          "give a new or empty folder")
    return None  # a listing interrupted before its manifest: made again
