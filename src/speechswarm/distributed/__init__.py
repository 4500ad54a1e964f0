"""Training on more than one process: DDP through torchrun, Hogwild, Slurm scripts, comparison.

    speechswarm train --nproc 2 --config tiny          # DDP (ddp.py, launch.py)
    speechswarm train --hogwild 2 --config tiny        # Hogwild (hogwild.py)
    speechswarm slurm --nodes 2 --gpus-per-node 4 --config small > job.sbatch   (slurm.py)
    speechswarm compare --config tiny --minutes 10     # central vs DDP vs Hogwild (compare.py)

The training loop knows none of these: it talks to a `sync.Synchronizer`.
"""
