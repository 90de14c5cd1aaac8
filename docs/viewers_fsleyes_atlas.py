"""FSLeyes script (``fsleyes -r``) for docs/render_viewers.sh: the atlas route, as a user would click it.

The default ortho view with its location panel, plus the atlas panel (Settings > Ortho View 1 >
Atlases) docked on the right, the atlas ``$LLM2NIFTI_ATLAS_XML`` added (what the panel's "+"
button does, saved in FSLeyes' settings under ``$HOME``) and ticked, and the cursor on voxel
``$LLM2NIFTI_VOXEL`` (``i,j,k``). ``frame`` and ``overlayList`` are given by FSLeyes.
"""

import os

import fsl.data.atlases as atlases
import wx
from fsleyes.plugins.controls.atlaspanel.atlaspanel import AtlasPanel
from fsleyes.views.orthopanel import OrthoPanel

if not atlases.hasAtlas("layers"):
    atlases.addAtlas(os.environ["LLM2NIFTI_ATLAS_XML"], atlasID="layers")
frame.SetSize((1500, 1000))  # noqa: F821
frame.SetPosition((0, 0))  # noqa: F821
ortho = frame.addViewPanel(OrthoPanel, defaultLayout=True)  # noqa: F821
ortho.togglePanel(AtlasPanel, location=wx.RIGHT)
ortho.getPanel(AtlasPanel)._AtlasPanel__infoPanel.enableAtlasInfo("layers")  # tick the layer atlas
i, j, k = (int(v) for v in os.environ["LLM2NIFTI_VOXEL"].split(","))
opts = ortho.displayCtx.getOpts(overlayList[0])  # noqa: F821
ortho.displayCtx.worldLocation.xyz = opts.transformCoords([[i, j, k]], "voxel", "world")[0]
