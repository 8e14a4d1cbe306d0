"""Readers for public datasets in their native layouts: `melo` (Shenzhen, blood cells,
ChestX-ray14, INbreast), `odir` and `iu_xray` (MoRA), `mmc_amd`, `derm7pt` and `mrnet`
(EI; `annotations` reads the EI code's annotation lists). Use them by name through
`medpeft.data.sources.recipe_source`."""
