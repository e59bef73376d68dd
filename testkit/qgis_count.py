"""Run by Debian's python3 (python3-qgis), not the project's venv: loads an OGC API - Features collection as a
QGIS layer (the OAPIF provider, headless) and prints its feature count and the features it iterated.

    QT_QPA_PLATFORM=offscreen /usr/bin/python3 testkit/qgis_count.py <landing page URL> <collection>
"""

import os
import sys

from qgis.core import QgsApplication, QgsVectorLayer

app = QgsApplication([], False)
app.initQgis()
layer = QgsVectorLayer(f"url='{sys.argv[1]}' typename='{sys.argv[2]}' pagingEnabled='true'", sys.argv[2], "OAPIF")
if not layer.isValid():
    print("invalid layer:", layer.error().summary())
    sys.exit(2)
print(layer.featureCount(), sum(1 for _ in layer.getFeatures()), flush=True)
os._exit(0)  # QGIS 3.22's exitQgis() may crash at teardown after a network provider was used
