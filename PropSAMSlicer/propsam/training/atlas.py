"""Volumes of any shape in flat buffers on one device, with per-slice tables of their objects.

The device sampler reads every task's planes from these buffers with one vectorised gather, so a
batch can mix volumes of different shapes. A volume is an offset, a shape and strides into the
buffers (a thick-slice view of a synthetic volume is the same buffer with a larger z stride).
An object is a set of label values of one volume; its tables hold, per axis and slice, the
object's area and in-plane bounding box (rows, cols of that axis's plane, as in tasks._planes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .tasks import MIN_GUIDE_AREA

BIG = 1 << 20  # "no pixel" in a bounding-box minimum


def _plane_axes(axis: int) -> tuple[int, int]:
    """The (row, col) axes of a plane normal to `axis` (np.take order)."""
    return tuple(i for i in range(3) if i != axis)  # type: ignore[return-value]


def label_tables(labels: torch.Tensor, n_labels: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """labels (Z, Y, X) integer -> areas (n_labels, 3, length) and boxes (n_labels, 3, length, 4).

    areas[l, a, s]: voxels of label l in slice s along axis a; boxes[l, a, s] = (r0, c0, r1, c1),
    the inclusive in-plane extent (r0 = BIG, r1 = -1 where the label is absent).
    """
    device = labels.device
    lab = labels.reshape(-1).long()
    coords = torch.stack(torch.meshgrid(*[torch.arange(n, device=device) for n in labels.shape], indexing="ij")).reshape(3, -1)
    keep = lab > 0
    lab, coords = lab[keep], coords[:, keep]
    areas = torch.zeros(n_labels, 3, length, dtype=torch.int32, device=device)
    boxes = torch.empty(n_labels, 3, length, 4, dtype=torch.int32, device=device)
    boxes[..., :2], boxes[..., 2:] = BIG, -1
    for axis in range(3):
        key = lab * length + coords[axis]
        areas[:, axis] = torch.bincount(key, minlength=n_labels * length).view(n_labels, length).int()
        for j, (plane_axis, reduce) in enumerate([(0, "amin"), (1, "amin"), (0, "amax"), (1, "amax")]):
            values = coords[_plane_axes(axis)[plane_axis]].int()
            target = boxes[:, axis, :, j].reshape(-1)
            boxes[:, axis, :, j] = target.scatter_reduce(0, key, values, reduce, include_self=True).view(n_labels, length)
    return areas, boxes


def object_tables(areas: torch.Tensor, boxes: torch.Tensor, members: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-label tables -> per-object tables; members (O, n_labels) bool marks each object's labels."""
    # float matmul (integer matmul is not implemented on CUDA); exact, since areas are far below 2**24
    obj_areas = torch.einsum("ol,las->oas", members.float(), areas.float()).round().int()
    big = torch.full_like(boxes[..., 0], BIG)
    out = []
    for j, lower in enumerate([True, True, False, False]):
        v = boxes[..., j][None].expand(members.shape[0], -1, -1, -1)
        fill = big if lower else -torch.ones_like(big)
        v = torch.where(members[:, :, None, None], v, fill[None])
        out.append(v.amin(1) if lower else v.amax(1))
    return obj_areas, torch.stack(out, -1)


@dataclass
class Atlas:
    """Volumes and objects on one device (see the module docstring)."""

    image: torch.Tensor  # flat float32
    labels: torch.Tensor  # flat integer
    offset: torch.Tensor  # (V,) long
    shape: torch.Tensor  # (V, 3) long
    stride: torch.Tensor  # (V, 3) long
    spacing: torch.Tensor  # (V, 3) float
    obj_volume: torch.Tensor  # (O,) long
    obj_weight: torch.Tensor  # (O,) float: the volume's weight shared among its objects
    members: torch.Tensor  # (O, n_labels) bool
    areas: torch.Tensor  # (O, 3, L) int32
    boxes: torch.Tensor  # (O, 3, L, 4) int32

    @property
    def total_weight(self) -> float:
        """Weight of the objects that have a usable slice (only those are ever drawn)."""
        usable = (self.areas >= MIN_GUIDE_AREA).any(-1).any(-1)
        return float((self.obj_weight * usable).sum())


def build_atlas(volumes: list[tuple[torch.Tensor, torch.Tensor, tuple, float, list[list[int]]]], device) -> Atlas:
    """volumes: (image float (Z,Y,X), labels int (Z,Y,X), spacing_zyx, weight, label sets of its objects)."""
    length = max(max(v[0].shape) for v in volumes)
    n_labels = max(max([int(v[1].max())] + [max(s) for s in v[4]]) + 1 for v in volumes)  # sets may name lost labels
    images, labels, offsets, shapes, spacings = [], [], [], [], []
    obj_volume, obj_weight, members, areas, boxes = [], [], [], [], []
    offset = 0
    for i, (image, lab, spacing, weight, sets) in enumerate(volumes):
        lab = lab.to(device)
        images.append(image.reshape(-1).float().to(device))
        labels.append(lab.reshape(-1).to(torch.int16 if n_labels < 2**15 else torch.int32))
        offsets.append(offset)
        offset += image.numel()
        shapes.append(list(image.shape))
        spacings.append(list(spacing))
        if not sets:
            continue
        member = torch.zeros(len(sets), n_labels, dtype=torch.bool, device=device)
        for o, s in enumerate(sets):
            member[o, list(s)] = True
        label_areas, label_boxes = label_tables(lab, n_labels, length)
        a, b = object_tables(label_areas, label_boxes, member)
        members.append(member), areas.append(a), boxes.append(b)
        obj_volume += [i] * len(sets)
        obj_weight += [weight / len(sets)] * len(sets)
    shape = torch.tensor(shapes, dtype=torch.long, device=device)
    stride = torch.stack([shape[:, 1] * shape[:, 2], shape[:, 2], torch.ones_like(shape[:, 0])], 1)
    return Atlas(torch.cat(images), torch.cat(labels), torch.tensor(offsets, device=device), shape, stride,
                 torch.tensor(spacings, dtype=torch.float32, device=device),
                 torch.tensor(obj_volume, dtype=torch.long, device=device),
                 torch.tensor(obj_weight, dtype=torch.float32, device=device),
                 torch.cat(members), torch.cat(areas), torch.cat(boxes))
