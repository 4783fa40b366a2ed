"""Request data shared by the serving tests (canonical WORLD_FEATURES columns)."""

MODEL_NAME = "crocodile"
STABLE_VERSION, CANARY_VERSION = 1, 2


def good_features(user="u00042", item="i00017", domain=1, price=12.5):
    return {"user_id": user, "item_id": item, "domain_id": domain, "user_segment": "seg3",
            "user_region": "r2", "item_category": "c7", "price": price}


def user_context(user="u00042", domain=1):
    return {"user_id": user, "domain_id": domain, "user_segment": "seg3", "user_region": "r2"}


def candidates(n, start=0):
    return [{"item_id": f"i{start + k:05d}", "item_category": f"c{k % 4}", "price": 1.0 + k} for k in range(n)]
