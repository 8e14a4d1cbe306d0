"""Readers for public datasets in their native layouts: `melo` (Shenzhen, blood cells,
ChestX-ray14, INbreast), `odir` and `iu_xray`. Use them by name through
`medpeft.data.sources.recipe_source`."""
