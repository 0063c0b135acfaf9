"""Reading cases and writing outputs: the platform and training layouts (``read``), ``ehr.json``
(``clinical``), PET units (``suv``), the platform's all-or-nothing output set (``write``) and the SYNTHETIC
phantom case (``phantom``)."""
