"""FSLeyes script (``fsleyes -r``) for docs/render_viewers.sh: the atlas route, as a user would click it.

The default ortho view with its location panel, plus the atlas panel (Settings > Ortho View 1 >
Atlases) docked on the right with the layer atlas ticked, and the cursor on voxel
``$LLM2NIFTI_VOXEL`` (``i,j,k``). The layer atlas must be known to FSLeyes: the render script puts
``layers.xml`` and ``layers.nii.gz`` into ``$FSLDIR/data/atlases`` of a scratch FSLDIR.
``frame``, ``overlayList`` are given by FSLeyes.
"""

import os

import wx
from fsleyes.plugins.controls.atlaspanel.atlaspanel import AtlasPanel
from fsleyes.views.orthopanel import OrthoPanel

frame.SetSize((1500, 1000))  # noqa: F821
frame.SetPosition((0, 0))  # noqa: F821
ortho = frame.addViewPanel(OrthoPanel, defaultLayout=True)  # noqa: F821
ortho.togglePanel(AtlasPanel, location=wx.RIGHT)
ortho.getPanel(AtlasPanel)._AtlasPanel__infoPanel.enableAtlasInfo("layers")  # tick the layer atlas
i, j, k = (int(v) for v in os.environ["LLM2NIFTI_VOXEL"].split(","))
opts = ortho.displayCtx.getOpts(overlayList[0])  # noqa: F821
ortho.displayCtx.worldLocation.xyz = opts.transformCoords([[i, j, k]], "voxel", "world")[0]
