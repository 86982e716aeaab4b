import os
from pathlib import Path
import pytest

# Nothing in the tests may touch the network: torchvision's weights API is never asked to download.
os.environ.setdefault('ELN_NB_OFFLINE', '1')

def _shared() -> Path:
    "`$ELN_SHARED`, else the `shared/` folder next to the repository."
    return Path(os.environ.get('ELN_SHARED') or Path(__file__).resolve().parents[1].parent / 'shared')

@pytest.fixture
def shared():
    "Path to ../shared (or $ELN_SHARED); skips the test when it is absent."
    p = _shared()
    if not p.is_dir(): pytest.skip(f'{p} not found')
    return p

def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: long test (e.g. torch.compile); runs only with ELN_NB_SLOW=1')
