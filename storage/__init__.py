"""The SQL store: the ledger of the pipeline (pools, configurations, labels, campaigns, rounds, checkpoints).

Pure SQLAlchemy + ASE; knows nothing of torch. Use :class:`Store`::

    from sapis.storage import Store
    store = Store()            # the URL from settings; the schema is migrated on first use
"""

from __future__ import annotations

from sapis.storage.campaigns import CampaignInfo, RoundInfo
from sapis.storage.labels import Claim
from sapis.storage.pools import PoolInfo, SubmitReport
from sapis.storage.store import Store

__all__ = ["CampaignInfo", "Claim", "PoolInfo", "RoundInfo", "Store", "SubmitReport"]
