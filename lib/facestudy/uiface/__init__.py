"""facestudy.uiface"""
