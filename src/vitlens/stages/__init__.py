"""One thin script per DVC stage: parse the arguments dvc.yaml passes, make one library call
(vitlens.cifar.prepare or vitlens.pipeline.*), report failures in one line. Nothing imports
these."""
