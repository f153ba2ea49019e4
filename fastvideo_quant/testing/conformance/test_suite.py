"""The whole suite for the method named by ``--fvq-method`` (what ``fvq check NAME`` runs).

Named ``test_*`` so ``--pyargs fastvideo_quant.testing.conformance`` collects it;
plugin tests import the mixins from the package instead, so this class never
runs there.
"""

from __future__ import annotations

import pytest

from fastvideo_quant.testing.conformance import ConformanceTests


class TestConformance(ConformanceTests):
    """The class attributes come from ``--fvq-method`` / ``--fvq-config``; everything else is the default."""

    @pytest.fixture(scope="class")
    @classmethod
    def fvq_method(cls, request: pytest.FixtureRequest) -> str:
        name = request.config.getoption("--fvq-method", default=None)
        if not name:
            pytest.skip("no method given: pass --fvq-method NAME (or run `fvq check NAME`)")
        from fastvideo_quant.testing.conformance.fixtures import SETTABLE
        from fastvideo_quant.testing.pytest_plugin import fvq_config_option, fvq_set_options

        request.cls.config = fvq_config_option(request.config)
        for attr, value in fvq_set_options(request.config, SETTABLE).items():
            setattr(request.cls, attr, value)
        return name
