"""Training entry point for Box2Mask or PropMask: one process on CPU, or DDP under torchrun.

Checkpoints (model, optimizer, schedule, step, RNG) are written atomically every few steps and
the run resumes from its folder's checkpoint; fp16 weights for the engine are exported beside it.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..config import NetworkConfig, named_config
from ..modeling import build_network
from ..weights import save_network
from .checkpoint import FILENAME as CHECKPOINT_FILENAME, load_checkpoint, save_checkpoint
from .losses import box2mask_loss, propmask_loss
from .phantom_sources import PhantomPool
from .sources import load_sources
from .synthesis import SynthPool, load_label_maps
from .tasks import MIN_GUIDE_AREA, TaskOptions, collate, sample_box2mask, sample_propmask_task
from .widen import check_widening, widen_state


@dataclass
class TrainConfig:
    out_dir: str
    network: str = "propmask"  # or "box2mask"
    model: str = "lite"  # named configuration the network comes from
    network_overrides: dict = field(default_factory=dict)  # e.g. {"boundary_head": true}
    steps: int = 4000
    batch_size: int = 4  # tasks (PropMask) or crops (Box2Mask) per process and step
    adjacent: int = 8
    lr: float = 5e-4
    lr_min: float = 1e-5
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    bce: bool = True
    seed: int = 0
    data_dir: str = ""  # default: ../shared/data beside the repository
    phantom_pool: int = 48
    phantom_weight: float = 0.5  # sampling weight of each phantom volume (real volumes: 0.7-3, see data manifest)
    phantom_refresh_every: int = 100
    checkpoint_every: int = 100
    log_every: int = 20
    threads: int = 0  # 0: torch default
    cpu_bf16: bool = False  # bf16 autocast on CPU: ~1.5x faster steps where the CPU has avx512_bf16/AMX
    max_minutes: float = 0  # stop (with a checkpoint) after this long; 0: no limit
    init_from: str = ""  # warm start: an engine weights file (e.g. a shipped model's); new parts start fresh
    # warm start of a network with mask_hint from one without: the hint's first-layer weights start
    # at this x the slice's (0: at zero, the network begins unchanged; > 0: it begins reading the
    # guide's region as brighter, so the channel is in use from the first step)
    hint_init: float = 0.0
    synthesis_maps: list = field(default_factory=list)  # training-split ids whose label maps feed synthesis
    synth_pool: int = 32
    synth_weight: float = 0.5  # sampling weight of each synthetic volume
    lesion_kinds: list = field(default_factory=lambda: ["blob"])  # planted in real images: synthesis.LESION_KINDS
    lesion_share: float = 0.25  # share of synthetic volumes that are real images with planted lesions
    perturb_guide: float = 0.0  # PropMask: share of tasks with a slightly wrong guide mask
    end_fraction: float = 0.3  # PropMask: share of guides within one window of the object's end (where stopping is learned)
    small_share: float = 0.0  # PropMask: share of tasks from objects of small cross-section (tasks.SMALL_GUIDE_AREA)
    # PropMask: weight of a per-slice soft Dice beside the stack's (losses.slice_dice_loss): tapering
    # end slices, where hidden outlines lose their precision, count as much as large ones
    slice_dice: float = 0.0
    self_guide: float = 0.0  # PropMask: share of tasks guided by the network's own reading of the guide slice (own_guides)
    sampler: str = "cpu"  # "device": batches made on the training device from `pack` (device_data.py)
    pack: str = ""  # training pack (`propsam pack-data`) for the device sampler
    device_sampler: dict = field(default_factory=dict)  # synth_refresh_every, synthesis: SynthOptions fields
    checkpoint_minutes: float = 0  # also checkpoint after this many minutes since the last one; 0: steps only
    lr_by_time: bool = False  # cosine over max_minutes rather than steps (one-shot runs at an unknown step rate)
    weights_dir: str = ""  # also write the fp16 engine weights here (e.g. the device machine's $OUT)

    @classmethod
    def from_file(cls, path: str | os.PathLike, **overrides) -> "TrainConfig":
        data = json.loads(Path(path).read_text())
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)

    def network_config(self) -> NetworkConfig:
        base = getattr(named_config(self.model), self.network)
        return replace(base, **self.network_overrides).validate()


def default_data_dir() -> Path:
    return Path(os.environ.get("PROPSAM_DATA_DIR", Path(__file__).resolve().parents[3].parent / "shared" / "data"))


def cosine_lr(step: int, cfg: TrainConfig, time_fraction: float = 0.0) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = max((step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps), time_fraction)
    return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * min(1.0, t)))


HINT_WEIGHT = "image_encoder.stages.0.0.0.weight"  # PropMask's first convolution: its last input channel is the mask hint


def _widened(weight: torch.Tensor, shape: torch.Size, own_channel: int) -> torch.Tensor:
    """A 2D network's first convolution (O, 1, kh, kw) as one that reads more channels (O, C, kh, kw):
    a 2.5D network's neighbours and/or the mask hint (config.mask_hint). The slice's own channel
    (`own_channel`) keeps the weights, the others start at zero, so the warm-started network
    begins as the 2D one. Any other tensor is returned as it is."""
    if weight.dim() == 4 and weight.shape[1] == 1 and len(shape) == 4 and shape[1] > 1 and shape[0] == weight.shape[0] \
            and shape[2:] == weight.shape[2:]:
        wide = weight.new_zeros(shape)
        wide[:, own_channel] = weight[:, 0]
        return wide
    return weight


class Trainer:
    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        if self.distributed and not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        self.rank = dist.get_rank() if self.distributed else 0
        self.world = dist.get_world_size() if self.distributed else 1
        if torch.cuda.is_available():
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.out = Path(cfg.out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.net_config = cfg.network_config()
        torch.manual_seed(cfg.seed)
        self.net = build_network(self.net_config).to(self.device)
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.step = 0
        self.tasks_seen = 0
        self.own_guides_used = 0  # tasks guided by the network's own reading since the last log line (self_guide)
        self.rng = np.random.default_rng([cfg.seed, self.rank])
        self.pool_state = self.synth_state = None
        if not self._resume() and cfg.init_from:
            self._warm_start(Path(cfg.init_from))
        self.model = (
            torch.nn.parallel.DistributedDataParallel(self.net, device_ids=[self.device] if self.device.type == "cuda" else None)
            if self.distributed else self.net
        )
        on_device = cfg.sampler == "device"  # the pack replaces the shared folder, phantom and synthesis pools
        data_dir = Path(cfg.data_dir) if cfg.data_dir else default_data_dir()
        self.real = load_sources(data_dir, "train") if data_dir.exists() and not on_device else []
        self.pool = PhantomPool(0 if on_device else cfg.phantom_pool, first_seed=1_000_000 * (self.rank + 1),
                                weight=cfg.phantom_weight, state=None if on_device else self.pool_state)
        maps = load_label_maps(data_dir, cfg.synthesis_maps) if cfg.synthesis_maps and data_dir.exists() and not on_device else []
        self.synth = SynthPool(maps, cfg.synth_pool, first_seed=5_000_000 * (self.rank + 1), weight=cfg.synth_weight,
                               state=self.synth_state, lesion_kinds=tuple(cfg.lesion_kinds), lesion_share=cfg.lesion_share)
        self.options = TaskOptions(image_size=self.net_config.image_size, adjacent=cfg.adjacent,
                                   memory=self.net_config.prompt_memory, memory_slices=self.net_config.memory_slices,
                                   perturb_guide=cfg.perturb_guide, end_fraction=cfg.end_fraction, small_share=cfg.small_share,
                                   self_guide=cfg.self_guide, in_channels=self.net_config.in_channels)
        if cfg.self_guide and not self.net_config.prompt_memory:
            raise ValueError("self_guide reads the guide slice from a round behind it, up to the prompt: the network needs prompt_memory")
        self.device_sampler = None
        if on_device:
            from .device_data import DeviceSampler

            self.device_sampler = DeviceSampler(cfg, self.device, self.options, seed=cfg.seed * 1000 + self.rank)

    @property
    def checkpoint_path(self) -> Path:
        return self.out / CHECKPOINT_FILENAME

    def _warm_start(self, path: Path) -> None:
        """Load a weights file's tensors; only parts the file cannot have (the prompt memory, the
        mask candidates, a 2.5D network's neighbour channels, the mask hint's channel, the extra
        channels of a wider network: training/widen.py) stay new, and the network begins as the
        file's did."""
        if not path.is_file():  # e.g. v2's PropMask, which v2.1 replaced: results/end_fraction_cpu/README.md says how to get it
            raise FileNotFoundError(f"init_from {path} does not exist (see the recipe's results README for where it comes from)")
        payload = torch.load(path, map_location="cpu", weights_only=True)
        raw = payload["state_dict"]
        own = self.net.state_dict()
        own_channel = self.net_config.in_channels // 2  # the centre of the image channels; the hint comes after them
        state = {k: _widened(v.float(), own[k].shape, own_channel) if k in own else v.float() for k, v in raw.items()}
        state, wider = widen_state(state, own)
        if wider:
            check_widening(NetworkConfig.from_dict(payload["config"]), self.net_config)
        if self.cfg.hint_init:
            if not self.net_config.mask_hint or own[HINT_WEIGHT].shape[1] == raw[HINT_WEIGHT].shape[1]:
                raise RuntimeError(f"hint_init starts a new mask-hint channel: the network must have mask_hint and {path} must not")
            state[HINT_WEIGHT][:, -1] = self.cfg.hint_init * state[HINT_WEIGHT][:, own_channel]
        missing, unexpected = self.net.load_state_dict(state, strict=False)
        new_parts = [k for k in missing if not k.startswith(("memory_attention.", "alternatives.", "quality."))]
        if new_parts or unexpected:
            raise RuntimeError(f"{path} does not fit this network: missing {new_parts[:3]}, unexpected {unexpected[:3]}")
        self.log({"warm_start": str(path), "new_tensors": len(missing), "widened_tensors": wider})

    def _resume(self) -> bool:
        if not self.checkpoint_path.exists():
            return False
        state = load_checkpoint(self.checkpoint_path, map_location=self.device)
        if NetworkConfig.from_dict(state["network_config"]) != self.net_config:  # a checkpoint from before a new field reads its default
            raise RuntimeError(f"{self.checkpoint_path} belongs to another network configuration")
        self.net.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.step, self.tasks_seen = state["step"], state["tasks_seen"]
        if self.rank < len(state["rng"]):
            self.rng.bit_generator.state = state["rng"][self.rank]
            self.pool_state = state.get("pools", [None] * (self.rank + 1))[self.rank]  # older checkpoints: new pool
            self.synth_state = state.get("synth_pools", [None] * (self.rank + 1))[self.rank]
        torch.set_rng_state(state["torch_rng"])
        return True

    def _save(self) -> None:
        rngs, pools, synths = [self.rng.bit_generator.state], [self.pool.state()], [self.synth.state()]
        if self.distributed:
            rngs, pools, synths = [None] * self.world, [None] * self.world, [None] * self.world
            dist.all_gather_object(rngs, self.rng.bit_generator.state)
            dist.all_gather_object(pools, self.pool.state())
            dist.all_gather_object(synths, self.synth.state())
        if self.rank != 0:
            return
        state = {
            "model": self.net.state_dict(), "optimizer": self.opt.state_dict(), "step": self.step,
            "tasks_seen": self.tasks_seen, "rng": rngs, "pools": pools, "synth_pools": synths, "torch_rng": torch.get_rng_state(),
            "network_config": self.net_config.to_dict(), "train_config": asdict(self.cfg),
        }
        save_checkpoint(state, self.checkpoint_path)
        save_network(self.net, self.net_config, self.out / f"{self.cfg.network}.pt")
        if self.cfg.weights_dir:
            Path(self.cfg.weights_dir).mkdir(parents=True, exist_ok=True)
            save_network(self.net, self.net_config, Path(self.cfg.weights_dir) / f"{self.cfg.network}.pt")

    def _batch(self) -> dict:
        if self.device_sampler is not None:
            return self.device_sampler.batch(self.step)
        sources = self.real + self.pool.sources + self.synth.sources
        sample = sample_propmask_task if self.cfg.network == "propmask" else sample_box2mask
        batch = collate([sample(sources, self.rng, self.options) for _ in range(self.cfg.batch_size)])
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def _forward(self, batch: dict, autocast) -> dict:
        """Network under autocast; losses in fp32 (bf16 sums over whole stacks lose precision)."""
        if "self_guide" in batch:
            guide_mask, used = own_guides(self.net, batch, autocast)
            batch = {**batch, "guide_mask": guide_mask}
            self.own_guides_used += int(used.sum())
        with autocast:
            if self.cfg.network == "propmask":
                out = self.model(batch["guide_image"], batch["guide_mask"], batch["adjacent"],
                                 batch.get("memory_image"), batch.get("memory_mask"))
            else:
                out = self.model(batch["image"])
        out = {k: [t.float() for t in v] if isinstance(v, list) else v.float() for k, v in out.items()}
        if self.cfg.network == "propmask":
            return propmask_loss(out, batch, self.cfg.bce, self.cfg.slice_dice)
        return box2mask_loss(out, batch, self.cfg.bce)

    def optimise(self, batch: dict, autocast) -> dict:
        """One optimiser step on `batch`; its losses (the step counters are the caller's)."""
        losses = self._forward(batch, autocast)
        self.opt.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), 12.0)
        self.opt.step()
        return losses

    def log(self, record: dict) -> None:
        if self.rank == 0:
            print(json.dumps(record), flush=True)
            with open(self.out / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def run(self) -> None:
        cfg = self.cfg
        start = last_save = time.time()
        window_start, window_tasks, data_time = time.time(), 0, 0.0
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16,
                                  enabled=self.device.type == "cuda" or cfg.cpu_bf16)
        self.net.train()
        while self.step < cfg.steps:
            for group in self.opt.param_groups:
                clock = (time.time() - start) / (60 * cfg.max_minutes) if cfg.lr_by_time and cfg.max_minutes else 0.0
                group["lr"] = cosine_lr(self.step, cfg, clock)
            wait_for_device(self.device)  # else the batch's first read-back waits on the last step: counted as data
            t0 = time.time()
            batch = self._batch()
            wait_for_device(self.device)
            data_time += time.time() - t0
            losses = self.optimise(batch, autocast)
            self.step += 1
            self.tasks_seen += cfg.batch_size * self.world
            window_tasks += cfg.batch_size * self.world
            if self.step % cfg.phantom_refresh_every == 0 and self.device_sampler is None:
                self.pool.refresh(2, self.rng)
                self.synth.refresh(4, self.rng)
            if self.step % cfg.log_every == 0:
                elapsed = time.time() - window_start
                self.log({"step": self.step, "tasks_seen": self.tasks_seen, "lr": round(group["lr"], 7),
                          **{k: round(float(v.detach()), 4) for k, v in losses.items()},
                          "tasks_per_s": round(window_tasks / elapsed, 2), "data_share": round(data_time / elapsed, 3),
                          **({"own_guide_share": round(self.own_guides_used / window_tasks, 3)} if cfg.self_guide else {})})
                self.own_guides_used = 0
                window_start, window_tasks, data_time = time.time(), 0, 0.0
            out_of_time = cfg.max_minutes and time.time() - start > cfg.max_minutes * 60
            due = cfg.checkpoint_minutes and time.time() - last_save > cfg.checkpoint_minutes * 60
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps or out_of_time or due:
                self._save()
                last_save = time.time()
            if out_of_time:
                self.log({"stopped": "max_minutes", "step": self.step})
                break
        if self.distributed:
            dist.barrier()
            dist.destroy_process_group()


def own_guides(net: torch.nn.Module, batch: dict, autocast) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's guide masks and which tasks took the network's own: where a task asks for it
    (batch["self_guide"] 1), the network's reading of the guide slice from the slice a round
    behind it (source_image, source_mask: a true mask) with the prompt memory, as in propagation's
    second and later rounds. No gradient flows through the reading. A reading under
    MIN_GUIDE_AREA pixels keeps the true guide (propagation would have stopped there)."""
    with torch.no_grad(), autocast:
        out = net(batch["source_image"], batch["source_mask"], batch["guide_image"][:, None],
                  batch.get("memory_image"), batch.get("memory_mask"))
    own = (out["masks"][0][:, 0].float() > 0).to(batch["guide_mask"].dtype)  # (B, 1, S, S)
    use = (batch["self_guide"] > 0) & (own.flatten(1).sum(1) >= MIN_GUIDE_AREA)
    return torch.where(use[:, None, None, None], own, batch["guide_mask"]), use


def wait_for_device(device: torch.device) -> None:
    """Let a GPU finish its queued work, so that the time around a call is that call's own.

    CUDA runs kernels asynchronously: without this the sampler's first read-back of a value
    (it reads a few each batch) waits for the previous step's backward pass, and the log's
    data_share counts the GPU's compute as data time. A no-op on the CPU.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train(cfg: TrainConfig) -> Path:
    Trainer(cfg).run()
    return Path(cfg.out_dir) / f"{cfg.network}.pt"
