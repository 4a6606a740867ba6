"""The reading feed: rank reports for a contact (model), compare with baselines, evaluate."""

from personatag.recommend.model import FeedModel, Item, Rules

__all__ = ["FeedModel", "Item", "Rules"]
