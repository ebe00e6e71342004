"""`blobs`: Gaussian clusters in `features` dimensions (scikit-learn's make_blobs), standardised."""

import torch
from pydantic import BaseModel, ConfigDict, Field

from compress.data.base import DataBundle, split_three, standardise
from compress.registry import register_dataset


class BlobsParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    classes: int = Field(4, ge=2)
    features: int = Field(16, ge=1)
    samples: int = Field(2000, ge=30)
    spread: float = Field(3.0, gt=0, description="cluster standard deviation")
    seed: int = 0


@register_dataset("blobs", params=BlobsParams,
                  summary="Gaussian clusters (make_blobs): classes x features, 60/20/20 split")
def load_blobs(p: BlobsParams) -> DataBundle:
    from sklearn.datasets import make_blobs
    x, y = make_blobs(p.samples, p.features, centers=p.classes, cluster_std=p.spread,
                      random_state=p.seed)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.long)
    n_val = n_test = p.samples // 5
    train, val, test = split_three(x, y, (p.samples - 2 * n_val, n_val, n_test), p.seed)
    standardise(train, val, test)
    return DataBundle("blobs", train, val, test, num_classes=p.classes, in_shape=(p.features,))
