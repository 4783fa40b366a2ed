"""Fixtures shared by the A/B statistics and report tests."""
import numpy as np
import pytest
from scipy import integrate
from scipy import stats as sps


def _mixture_likelihood_ratio(estimate, variance, tau, theta0=0.0):
    """mSPRT's Lambda by numerical integration: the normal likelihood ratio of theta0 + theta
    against theta0, averaged over theta ~ N(0, tau^2). Independent of stats.msprt's closed form."""
    sd = np.sqrt(variance)

    def integrand(theta):
        return (sps.norm.pdf(estimate, theta0 + theta, sd) / sps.norm.pdf(estimate, theta0, sd)
                * sps.norm.pdf(theta, 0, tau))

    return integrate.quad(integrand, -12 * tau, 12 * tau, points=[estimate - theta0], limit=200)[0]


@pytest.fixture
def mixture_likelihood_ratio():
    return _mixture_likelihood_ratio
