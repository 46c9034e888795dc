"""model.pretrained_download: a failed download (file:// URLs, no network needed) is one UserError naming
the URL and the manual fix, and leaves no file in the hub cache."""
import pytest

from common.config import UserError
from common.models.pretrained import download_weights


def test_a_missing_file_is_one_error_naming_the_url_and_where_to_put_it(tmp_path):
    source = tmp_path / "resnet18-f37072fd.pth"
    target = tmp_path / "hub" / "checkpoints" / source.name
    with pytest.raises(UserError, match=rf"downloading {source.as_uri()} failed \(URLError: .*\); put "
                                        rf"{source.name} in {target.parent}/ by hand"):
        download_weights(source.as_uri(), target)
    assert list(target.parent.iterdir()) == []


def test_a_file_whose_checksum_differs_from_its_name_is_refused(tmp_path):
    source = tmp_path / "resnet18-f37072fd.pth"
    source.write_bytes(b"not the weights")
    target = tmp_path / "hub" / "checkpoints" / source.name
    with pytest.raises(UserError, match=r"failed \(RuntimeError: invalid hash value"):
        download_weights(source.as_uri(), target)
    assert list(target.parent.iterdir()) == []
