"""Fuzzed component images: import reads them or refuses them with an llm2nifti error, nothing else.

A seeded campaign mutates real component images on a tiny export's grid (header
fields, bytes of the NIfTI stream, bytes of the gzip stream) and feeds each file
to :func:`~llm2nifti.import_components`. Any exception other than a
:class:`~llm2nifti.errors.Llm2niftiError` fails, and so does accepting a file
whose gzip stream is damaged. Targeted tests of
:func:`~llm2nifti.formats.nifti.load_image` follow.
"""

from __future__ import annotations

import gzip
import random
import warnings
from collections import Counter
from dataclasses import dataclass

import nibabel as nib
import numpy as np
import pytest

from llm2nifti import import_components, run_ica
from llm2nifti.errors import DamagedFileError, Llm2niftiError, ParameterError
from llm2nifti.formats.nifti import load_image

DEFAULT_SEEDS = range(500)
SLOW_SEEDS = range(500, 3000)
HEADER_FIELDS = ("sizeof_hdr", "dim", "pixdim", "datatype", "bitpix", "vox_offset", "scl_slope", "scl_inter",
                 "qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d", "qoffset_x", "srow_x",
                 "srow_y", "srow_z", "magic", "intent_code", "xyzt_units")
INT_VALUES = (-32768, -1, 0, 1, 2, 3, 4, 5, 7, 8, 16, 64, 128, 255, 256, 511, 1024, 1536, 2048, 32767)
FLOAT_VALUES = (0.0, -0.0, 1.0, -1.0, 0.5, 1e-30, 1e30, 3.4e38, 351.0, 352.0, 544.0, 1e6,
                float("nan"), float("inf"), float("-inf"))
MAGICS = (b"n+1\0", b"ni1\0", b"n+2\0", b"\0\0\0\0", b"n+1\0\r\n\x1a\n", b"ni2\0\r\n\x1a\n", b"xyz\0")
GZIP_HEADER, GZIP_TRAILER = 10, 8


@dataclass(frozen=True)
class Case:
    """One fuzzed file: what was done to which image, and the bytes to write."""

    seed: int
    kind: str
    description: str
    suffix: str
    payload: bytes


def grid_image(export_dir, n_volumes: int, dtype=np.float32, cls=nib.Nifti1Image, seed: int = 0):
    """Random maps on the export's brain-mask grid, zero outside the mask."""
    mask_img = nib.load(next(export_dir.rglob("*_desc-brain_mask.nii.gz")))
    mask = np.asarray(mask_img.dataobj) != 0
    values = np.random.default_rng(seed).standard_normal(mask.shape + (n_volumes,)) * mask[..., None]
    img = cls((values[..., 0] if n_volumes == 1 else values).astype(np.float32), mask_img.affine)
    img.set_data_dtype(dtype)
    return img


def canica_image(export_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run_ica(export_dir, n_components=3, n_init=1, figures=False, progress=False).ica.components_img_


@pytest.fixture(scope="module")
def bases(tiny_export):
    """Uncompressed bytes and header layout of each image the fuzz starts from."""
    melodic = grid_image(tiny_export, 2)
    images = {
        "float32-4d": grid_image(tiny_export, 3),
        "int16-scaled-4d": grid_image(tiny_export, 3, dtype=np.int16),
        "nifti2-3d": grid_image(tiny_export, 1, dtype=np.float64, cls=nib.Nifti2Image),
        "melodic-5d": nib.Nifti1Image(melodic.get_fdata()[:, :, :, None, :].astype(np.float32), melodic.affine),
        "canica": canica_image(tiny_export),
    }
    return {name: (img.to_bytes(), img.header.structarr.dtype) for name, img in images.items()}


def _position(rng: random.Random, size: int, hot: range) -> int:
    """A byte position: half the time inside ``hot`` (header, trailer), else anywhere."""
    hot = range(max(hot.start, 0), min(hot.stop, size))
    return rng.choice(hot) if hot and rng.random() < 0.5 else rng.randrange(max(size, 1))


def flip(rng, data: bytearray, hot: range) -> str:
    positions = sorted(_position(rng, len(data), hot) for _ in range(rng.choice((1, 1, 2, 4))))
    for pos in positions:
        data[pos] ^= rng.randrange(1, 256)
    return f"flip at {positions}"


def insert(rng, data: bytearray, hot: range) -> str:
    pos, extra = _position(rng, len(data), hot), rng.randbytes(rng.choice((1, 2, 4, 16)))
    data[pos:pos] = extra
    return f"insert {len(extra)} at {pos}"


def delete(rng, data: bytearray, hot: range) -> str:
    pos, length = _position(rng, len(data), hot), rng.choice((1, 2, 4, 64))
    del data[pos:pos + length]
    return f"delete {length} at {pos}"


def truncate(rng, data: bytearray, hot: range) -> str:
    pos = _position(rng, len(data), hot)
    del data[pos:]
    return f"truncate at {pos}"


def append(rng, data: bytearray, hot: range) -> str:
    extra = rng.choice((b"\0" * 8, rng.randbytes(rng.choice((1, 3, 20))), gzip.compress(b"more", mtime=0)))
    data += extra
    return f"append {extra[:8]!r}... ({len(extra)} bytes)"


BYTE_MUTATIONS = (flip, flip, insert, delete, truncate, append)


def set_field(rng, data: bytearray, header_dtype: np.dtype) -> str:
    """Give one header field (one element of an array field) an awkward value."""
    name = rng.choice(HEADER_FIELDS)
    dtype, offset = header_dtype.fields[name]
    field = np.ndarray(dtype.shape, dtype.base, buffer=data, offset=offset)
    index = tuple(rng.randrange(n) for n in dtype.shape)
    if dtype.base.kind == "S":
        value = rng.choice(MAGICS)[:dtype.base.itemsize]
    elif dtype.base.kind == "f":
        value = rng.choice(FLOAT_VALUES + (float(field[index]) * rng.choice((-1, 2, 1e-3)),))
    else:
        value = rng.choice(INT_VALUES + (int(field[index]) - 1, int(field[index]) + 1, 2 ** 31 - 1, 2 ** 40))
    with np.errstate(over="ignore", invalid="ignore"):  # wrapping and overflow are part of the fuzz
        field[index] = np.asarray(value).astype(dtype.base)
    return f"{name}{list(index) if index else ''}={value!r}"


def make_case(seed: int, bases: dict) -> Case:
    """The mutation of one seed: header fields, NIfTI bytes or gzip bytes of one base image."""
    rng = random.Random(seed)
    name = rng.choice(sorted(bases))
    raw, header_dtype = bases[name]
    data, kind = bytearray(raw), rng.choice(("header", "nifti-bytes", "gzip-bytes"))
    header = range(header_dtype.itemsize + 4)
    if kind == "header":
        done = [set_field(rng, data, header_dtype) for _ in range(rng.choice((1, 1, 2, 3)))]
    elif kind == "nifti-bytes":
        done = [rng.choice(BYTE_MUTATIONS)(rng, data, header)]
    else:
        data = bytearray(gzip.compress(bytes(data), compresslevel=1, mtime=0))
        ends = range(GZIP_HEADER) if rng.random() < 0.5 else range(len(data) - GZIP_TRAILER, len(data))
        done = [rng.choice(BYTE_MUTATIONS)(rng, data, ends)]
    gzipped = kind == "gzip-bytes" or rng.random() < 0.5
    payload = bytes(data) if kind == "gzip-bytes" or not gzipped else gzip.compress(bytes(data), mtime=0)
    return Case(seed, kind, f"{name} {kind}: {'; '.join(done)}", ".nii.gz" if gzipped else ".nii", payload)


def gzip_damaged(payload: bytes) -> bool:
    """Whether Python's own gzip module refuses the stream (CRC, length, truncation, garbage)."""
    try:
        gzip.decompress(payload)
    except Exception:  # any refusal counts as damage
        return True
    return False


def run_case(case: Case, directory, export_dir) -> str | None:
    """``None`` when import succeeds or refuses properly; else what went wrong."""
    path = directory / f"case-{case.seed}{case.suffix}"
    path.write_bytes(case.payload)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import_components(path, export_dir, top_k=2)
    except Llm2niftiError as err:
        return "multi-line error message" if "\n" in str(err) else None
    except Exception as err:  # the point: nothing else may escape
        return f"{type(err).__name__}: {' '.join(str(err).split())[:120]}"
    finally:
        path.unlink()
    return "accepted a damaged gzip stream" if case.suffix == ".nii.gz" and gzip_damaged(case.payload) else None


def fuzz(seeds, bases, directory, export_dir) -> None:
    """Run every seed; fail with a tally by problem and the first offending seeds."""
    problems = [(case, problem) for case in (make_case(seed, bases) for seed in seeds)
                if (problem := run_case(case, directory, export_dir)) is not None]
    if problems:
        tally = Counter(problem.split(":")[0] for _, problem in problems)
        examples = "\n".join(f"  seed {case.seed} ({case.description}): {problem}" for case, problem in problems[:15])
        pytest.fail(f"{len(problems)} of {len(seeds)} fuzzed images mishandled: {dict(tally)}\n{examples}")


def test_fuzzed_images_are_read_or_refused(bases, tiny_export, tmp_path):
    fuzz(DEFAULT_SEEDS, bases, tmp_path, tiny_export)


@pytest.mark.slow
def test_fuzzed_images_are_read_or_refused_long(bases, tiny_export, tmp_path):
    fuzz(SLOW_SEEDS, bases, tmp_path, tiny_export)


def test_fuzz_covers_every_kind_of_damage(bases):
    cases = [make_case(seed, bases) for seed in DEFAULT_SEEDS]
    kinds = Counter(case.kind for case in cases)
    assert min(kinds.values()) > len(cases) // 5, kinds
    assert sum(case.suffix == ".nii.gz" and gzip_damaged(case.payload) for case in cases) > 30
    assert make_case(7, bases) == make_case(7, bases)


@pytest.fixture
def image():
    rng = np.random.default_rng(1)
    return nib.Nifti1Image(rng.standard_normal((4, 5, 3, 2)).astype(np.float32), np.diag([2.0, 3.0, 4.0, 1.0]))


def save(img, path):
    nib.save(img, path)
    return path


def with_header(image, path, **fields):
    """Write ``image`` to ``path`` with raw header ``fields`` overwritten (no nibabel fix-ups)."""
    raw = bytearray(image.to_bytes())
    structarr = np.ndarray((), image.header.structarr.dtype, buffer=raw)
    for key, value in fields.items():
        structarr[key] = value
    path.write_bytes(bytes(raw))
    return path


def gz_bytes(img) -> bytearray:
    return bytearray(gzip.compress(img.to_bytes(), mtime=0))


@pytest.mark.parametrize("name,dtype,cls", [
    ("a.nii", np.float32, nib.Nifti1Image),
    ("a.nii.gz", np.float32, nib.Nifti1Image),
    ("a.nii.gz", np.int16, nib.Nifti1Image),
    ("a.nii", np.uint8, nib.Nifti1Image),
    ("a.nii", np.float64, nib.Nifti2Image),
    ("a.nii.gz", np.int32, nib.Nifti2Image),
])
def test_good_image_loads_as_nibabel_reads_it(tmp_path, image, name, dtype, cls):
    img = cls(image.get_fdata(), image.affine)
    img.set_data_dtype(dtype)
    path = tmp_path / name
    nib.save(img, path)
    loaded, reference = load_image(path), nib.load(path)
    expected = np.asarray(reference.dataobj)
    np.testing.assert_array_equal(loaded.data, expected)
    assert loaded.data.dtype == np.promote_types(expected.dtype, np.float32)
    assert type(loaded.data) is np.ndarray
    np.testing.assert_array_equal(loaded.affine, reference.affine)
    assert loaded.shape == reference.shape and loaded.source == str(path)
    assert isinstance(loaded.header, type(reference.header))


def test_in_memory_image(image):
    loaded = load_image(image)
    np.testing.assert_array_equal(loaded.data, image.get_fdata(dtype=np.float32))
    assert loaded.source == "<in-memory image>"


def test_gzip_members_and_zero_padding_are_accepted(tmp_path, image):
    raw = image.to_bytes()
    half = len(raw) // 2
    path = tmp_path / "members.nii.gz"
    path.write_bytes(gzip.compress(raw[:half]) + gzip.compress(raw[half:]) + b"\0" * 16)
    np.testing.assert_array_equal(load_image(path).data, image.get_fdata(dtype=np.float32))


def test_complex_image_is_refused(tmp_path, image):
    img = nib.Nifti1Image(image.get_fdata().astype(np.complex64), image.affine)
    with pytest.raises(DamagedFileError, match=r"c\.nii\.gz: holds complex voxels"):
        load_image(save(img, tmp_path / "c.nii.gz"))
    with pytest.raises(ParameterError, match=r"`maps` \(an in-memory image\): holds complex voxels"):
        load_image(img, param="maps")


@pytest.mark.parametrize("fields,kind", [("RGB", "RGB"), ("RGBA", "RGBA")])
def test_rgb_image_is_refused(tmp_path, fields, kind):
    data = np.zeros((4, 5, 3), dtype=[(c, "u1") for c in fields])
    path = save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "rgb.nii")
    with pytest.raises(DamagedFileError, match=f"holds {kind} voxels"):
        load_image(path, what="component image")


def test_truncated_nii_is_refused(tmp_path, image):
    path = tmp_path / "t.nii"
    path.write_bytes(image.to_bytes()[:-10])
    with pytest.raises(DamagedFileError, match="t.nii: its header describes 480 bytes of voxels but it holds 470; "
                                               "the file is truncated"):
        load_image(path)
    path.write_bytes(image.to_bytes()[:200])
    with pytest.raises(DamagedFileError, match="200 bytes, too short for a NIfTI header"):
        load_image(path)


@pytest.mark.parametrize("damage", ["crc", "length", "truncated", "garbage", "body"])
def test_damaged_gzip_is_refused(tmp_path, image, damage):
    data = gz_bytes(image)
    if damage == "crc":
        data[-8] ^= 1
    elif damage == "length":
        data[-1] ^= 1
    elif damage == "truncated":
        del data[-3:]
    elif damage == "garbage":
        data += b"junk"
    else:
        data[len(data) // 2] ^= 0x55
    path = tmp_path / "d.nii.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(DamagedFileError, match=r"d\.nii\.gz: damaged gzip stream .*copy or download it again"):
        load_image(path)


@pytest.mark.parametrize("content,message", [
    (b"hello, world\n" * 40, "does not start with a NIfTI-1 or NIfTI-2 header"),
    (b"", "0 bytes, too short for a NIfTI header"),
    (gzip.compress(b"not nifti" * 50), "does not start with a NIfTI-1 or NIfTI-2 header"),
])
def test_non_nifti_file_is_refused(tmp_path, content, message):
    path = tmp_path / "x.nii.gz"
    path.write_bytes(content)
    with pytest.raises(DamagedFileError, match=message):
        load_image(path)


def test_missing_file_and_directory_are_refused(tmp_path):
    with pytest.raises(DamagedFileError, match="nope.nii.gz: no such file"):
        load_image(tmp_path / "nope.nii.gz")
    with pytest.raises(DamagedFileError, match="is a directory, not a NIfTI image"):
        load_image(tmp_path)


@pytest.mark.parametrize("value", [42, None, np.zeros((2, 2, 2)), ""])
def test_not_an_image_is_a_parameter_error(value):
    with pytest.raises(ParameterError, match=r"^`maps` must be a "):
        load_image(value, param="maps")


@pytest.mark.parametrize("header,message", [
    ({"magic": b"ni1"}, r"its magic is b'ni1', not a single-file NIfTI image's b'n\+1' \(the header of a .hdr"),
    ({"magic": b"abc"}, "its magic is b'abc'"),
    ({"sizeof_hdr": 349}, "does not start with a NIfTI-1 or NIfTI-2 header"),
    ({"datatype": 7}, "data code 7 not recognized"),
    ({"scl_slope": 2.0, "scl_inter": np.nan}, "invalid intercept"),
])
def test_header_nibabel_or_llm2nifti_rejects(tmp_path, image, header, message):
    with pytest.raises(DamagedFileError, match=message) as caught:
        load_image(with_header(image, tmp_path / "h.nii", **header))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("sform,message", [
    (np.diag([2.0, 0.0, 4.0, 1.0]), "singular: voxel axes of zero size or parallel"),
    (np.array([[1.0, 1.0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]), "singular"),
    (np.diag([2.0, np.nan, 4.0, 1.0]), "not a finite 4x4 matrix"),
])
def test_bad_affine_is_refused(tmp_path, image, sform, message):
    path = with_header(image, tmp_path / "a.nii", qform_code=0, sform_code=2, srow_x=sform[0], srow_y=sform[1],
                       srow_z=sform[2])
    with pytest.raises(DamagedFileError, match=message):
        load_image(path)


def test_image_without_affine_is_refused(image):
    with pytest.raises(ParameterError, match=r"`img` \(an in-memory image\): has no affine"):
        load_image(nib.Nifti1Image(image.get_fdata(), None))


def test_five_dimensional_images(tmp_path, image):
    maps = image.get_fdata(dtype=np.float32)
    loaded = load_image(save(nib.Nifti1Image(maps[:, :, :, None, :], image.affine), tmp_path / "m.nii.gz"))
    assert loaded.shape == loaded.data.shape == (4, 5, 3, 2)
    np.testing.assert_array_equal(loaded.data, maps)
    path = save(nib.Nifti1Image(np.stack([maps, maps], axis=3), image.affine), tmp_path / "5d.nii")
    with pytest.raises(DamagedFileError, match=r"a component image must be 3D .* or 4D .*got shape \(4, 5, 3, 2, 2\)"):
        load_image(path, what="component image")
    with pytest.raises(ParameterError, match=r"a brain mask must be 3D"):
        load_image(nib.Nifti1Image(np.zeros((4, 5), np.float32), np.eye(4)), what="brain mask")


def test_zero_size_dimension_is_refused(image):
    with pytest.raises(ParameterError, match="zero-size dimension"):
        load_image(nib.Nifti1Image(np.zeros((4, 0, 3), np.float32), np.eye(4)))
