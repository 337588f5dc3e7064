//go:build ts_omit_captiveportal

package main

// captivePortalBuilt: this binary has no captive-portal detection.
const captivePortalBuilt = false
