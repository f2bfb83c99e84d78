"""Which pydicom plugin decodes a transfer syntax first, alone and in pool workers."""

import pytest
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless

from cxrjepa.ingest import dicom_pixels
from cxrjepa.ingest.pool import single_threaded_decoders


@pytest.fixture
def restore_mode():
    yield
    dicom_pixels.prefer_single_threaded(False)


def test_pool_workers_prefer_a_single_threaded_jpeg2000_decoder(restore_mode):
    plugins = dicom_pixels.plugins_for(JPEG2000Lossless)
    if not {"gdcm", "pylibjpeg"} <= set(plugins):
        pytest.skip("needs both gdcm and pylibjpeg-openjpeg")
    assert plugins[0] == "gdcm"  # one process: gdcm's OpenJPEG threads use the idle cores
    ls_before = dicom_pixels.plugins_for(JPEGLSLossless)
    dicom_pixels.prefer_single_threaded()
    assert dicom_pixels.plugins_for(JPEG2000Lossless)[:2] == ["pylibjpeg", "gdcm"]
    assert dicom_pixels.plugins_for(JPEGLSLossless) == ls_before  # single-threaded either way: unchanged
    dicom_pixels.prefer_single_threaded(False)
    assert dicom_pixels.plugins_for(JPEG2000Lossless)[0] == "gdcm"


def test_jpeg_ls_is_decoded_by_charls_first():
    plugins = dicom_pixels.plugins_for(JPEGLSLossless)
    if "pyjpegls" not in plugins:
        pytest.skip("needs pyjpegls")
    assert plugins[0] == "pyjpegls"  # CharLS: 1.7x gdcm, 4x pylibjpeg on 12-bit radiographs


def test_pool_workers_decode_single_threaded_only_when_they_fill_the_cores():
    assert single_threaded_decoders(2, cores=2)  # one worker per core: threads would oversubscribe
    assert single_threaded_decoders(16, cores=16)
    assert single_threaded_decoders(9, cores=16)
    assert not single_threaded_decoders(8, cores=16)  # two cores per worker: gdcm's threads have room
    assert not single_threaded_decoders(1, cores=2)  # one worker on two cores: gdcm's threads have room
