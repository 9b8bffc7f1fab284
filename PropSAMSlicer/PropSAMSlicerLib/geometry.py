"""Volume node <-> engine Volume, and the coordinate maps between world RAS and voxel indices.

Slicer stores a volume's grid as IJKToRAS in the node's own (local) RAS; ITK/the engine use
LPS. The voxel array is shared: arrayFromVolume gives (K, J, I) = the engine's (Z, Y, X), so
numpy axis n is IJK axis 2 - n. Results are written with the node's own IJKToRAS, never with a
round-tripped copy of it.
"""

from __future__ import annotations

import numpy as np
import vtk
from vtk.util import numpy_support

from propsam.errors import InputError
from propsam.io.volume import Volume

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def matrix_to_numpy(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def node_name(node) -> str:
    return node.GetName() if node is not None else "(none)"


def check_volume_node(volume_node) -> None:
    if volume_node is None:
        raise InputError("no input volume is selected: choose the volume to segment")
    image = volume_node.GetImageData()
    if image is None or image.GetNumberOfPoints() == 0:
        raise InputError(f"volume '{node_name(volume_node)}' has no voxels (is it still loading?)")
    if image.GetNumberOfScalarComponents() != 1:
        raise InputError(
            f"volume '{node_name(volume_node)}' has {image.GetNumberOfScalarComponents()} components per voxel "
            "(color or vector image); convert it to a scalar volume first (Vector to Scalar Volume module)"
        )
    if min(image.GetDimensions()) < 1:
        raise InputError(f"volume '{node_name(volume_node)}' has no voxels")


def ijk_to_ras(volume_node) -> np.ndarray:
    """4x4 IJK -> the node's local RAS."""
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return matrix_to_numpy(matrix)


def parent_to_world(node) -> np.ndarray:
    """4x4 local -> world for a node under a linear transform (identity when none)."""
    transform = node.GetParentTransformNode()
    if transform is None:
        return np.eye(4)
    if not transform.IsTransformToWorldLinear():
        raise InputError(
            f"'{node_name(node)}' is under the non-linear transform '{node_name(transform)}'; "
            "harden the transform (Data module) before segmenting"
        )
    matrix = vtk.vtkMatrix4x4()
    transform.GetMatrixTransformToWorld(matrix)
    return matrix_to_numpy(matrix)


def world_to_ijk(volume_node) -> np.ndarray:
    """4x4 world RAS -> continuous voxel index (i, j, k) of the volume."""
    return np.linalg.inv(parent_to_world(volume_node) @ ijk_to_ras(volume_node))


def lps_geometry(volume_node) -> tuple[tuple, tuple, tuple]:
    """(spacing, origin, direction row-major) of the volume's grid in ITK's LPS convention."""
    matrix = ijk_to_ras(volume_node)
    lps = RAS_TO_LPS @ matrix[:3, :3]
    spacing = np.linalg.norm(lps, axis=0)
    if np.any(spacing <= 0):
        raise InputError(f"volume '{node_name(volume_node)}' has a zero voxel spacing {tuple(spacing)}")
    origin = RAS_TO_LPS @ matrix[:3, 3]
    direction = lps / spacing
    return tuple(map(float, spacing)), tuple(map(float, origin)), tuple(map(float, direction.ravel()))


def volume_from_node(volume_node, array: np.ndarray | None = None) -> Volume:
    """The node's grid in LPS with a copy of its voxels (or `array`): what the engine and the CLI read."""
    check_volume_node(volume_node)
    if array is None:
        import slicer.util

        array = np.array(slicer.util.arrayFromVolume(volume_node), copy=True)
    spacing, origin, direction = lps_geometry(volume_node)
    return Volume(array=array, spacing=spacing, origin=origin, direction=direction)


def oriented_image(volume_node, mask: np.ndarray | None = None):
    """vtkOrientedImageData on the volume's grid holding `mask` (Z, Y, X), or geometry only."""
    import slicer

    image = slicer.vtkOrientedImageData()
    dims = volume_node.GetImageData().GetDimensions()
    image.SetDimensions(*dims)
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    image.SetImageToWorldMatrix(matrix)
    if mask is not None:
        if tuple(mask.shape) != tuple(reversed(dims)):
            raise InputError(f"mask shape {mask.shape} differs from the volume's {tuple(reversed(dims))}")
        image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
        scalars = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
        scalars[:] = (np.asarray(mask) > 0).astype(np.uint8).ravel()
    return image


def image_to_array(image) -> np.ndarray:
    dims = image.GetDimensions()
    scalars = image.GetPointData().GetScalars()
    if scalars is None:
        return np.zeros(tuple(reversed(dims)), np.uint8)
    return numpy_support.vtk_to_numpy(scalars).reshape(tuple(reversed(dims))).copy()


def geometry_fingerprint(volume_node) -> tuple:
    """What must not change between reading a volume and writing its result."""
    return (tuple(volume_node.GetImageData().GetDimensions()), tuple(np.round(ijk_to_ras(volume_node), 9).ravel()))
