import pytest

from catalog.pricing import make_basket


@pytest.fixture(scope="module")
def basket():
    # Module-scoped: built once per agent and kept warm between measurements.
    return make_basket(2000)
