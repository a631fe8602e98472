"""Loading one source photo: bytes by URI or inline, bombs and corrupt files as item problems."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from deepperception.images import ImageProblem, open_photo, read_image_bytes, request_bytes


def _jpeg(w=80, h=60) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (20, 120, 200)).save(buf, format="JPEG")
    return buf.getvalue()


class TestReadImageBytes:
    def test_inline_bytes_win_and_a_uri_is_read(self, tmp_path):
        p = tmp_path / "a.jpg"
        p.write_bytes(_jpeg())
        assert read_image_bytes(b"inline", str(p)) == b"inline"
        assert read_image_bytes(None, str(p)) == p.read_bytes()

    def test_missing_and_empty_files_are_problems_with_reasons(self, tmp_path):
        with pytest.raises(ImageProblem) as err:
            read_image_bytes(None, str(tmp_path / "nope.jpg"))
        assert err.value.reason == "missing_file" and "nope.jpg" in err.value.detail
        (tmp_path / "empty.jpg").write_bytes(b"")
        with pytest.raises(ImageProblem) as err:
            read_image_bytes(None, str(tmp_path / "empty.jpg"))
        assert err.value.reason == "empty_image"
        with pytest.raises(ImageProblem) as err:
            read_image_bytes(None, None)
        assert err.value.reason == "empty_image"


class TestOpenPhoto:
    def test_truncated_jpeg_is_corrupt(self):
        data = _jpeg()
        with pytest.raises(ImageProblem) as err:
            open_photo(data[: len(data) // 2])
        assert err.value.reason == "corrupt_image"

    def test_decompression_bomb_is_refused_from_its_header(self, monkeypatch):
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 80x60 = 4800 pixels > 1000
        with pytest.raises(ImageProblem) as err:
            open_photo(_jpeg(), name="bomb.jpg")
        assert err.value.reason == "decompression_bomb" and "bomb.jpg" in err.value.detail

    def test_banner_is_cut_off_the_bottom(self):
        photo = open_photo(_jpeg(80, 60), crop_bottom=20)
        assert photo.size == (80, 40)
        with pytest.raises(ImageProblem, match="cannot cut 60 px"):
            open_photo(_jpeg(80, 60), crop_bottom=60)

    def test_request_bytes_are_the_original_file_unless_something_was_cut(self):
        data = _jpeg(80, 60)
        assert request_bytes(data, open_photo(data)) is data
        sent = request_bytes(data, open_photo(data, crop_bottom=20), crop_bottom=20)
        assert Image.open(io.BytesIO(sent)).size == (80, 40)
