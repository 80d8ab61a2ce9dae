from setuptools import find_packages, setup

setup(
    name="poi-nnunet",
    version="0.1.0",
    description="Self-configuring landmark (point of interest) detection with segmentation, built on nnU-Net v2",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["poi_nnunet*", "planners*", "trainers*", "dataset_conversion*"]),
    install_requires=[
        "torch",  # pinned only through constraints.txt
        "nnunetv2>=2.5",
        "batchgenerators",
        "SimpleITK",
        "numpy",
        "scipy",
        "scikit-image",
        "acvl-utils",
        "tqdm",
        "matplotlib",
        "TPTBox",
        "pillow",
        "optuna>=3.6",  # poi_tune
    ],
    extras_require={"test": ["pytest"]},
    entry_points={
        "console_scripts": [
            "poi_convert=poi_nnunet.cli.convert:main",
            "poi_plan_and_preprocess=poi_nnunet.cli.plan_and_preprocess:main",
            "poi_demo=poi_nnunet.cli.demo:main",
            "poi_evaluate=poi_nnunet.cli.evaluate:main",
            "poi_train=poi_nnunet.cli.train:main",
            "poi_predict=poi_nnunet.cli.predict:main",
            "poi_pseudo_masks=poi_nnunet.cli.pseudo_masks:main",
            "poi_tune=poi_nnunet.cli.tune:main",
            "poi_augment=poi_nnunet.cli.augment:main",
        ],
    },
)
