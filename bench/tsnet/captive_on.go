//go:build !ts_omit_captiveportal

package main

// captivePortalBuilt: this binary contains tailscale's captive-portal
// detection (built without -tags ts_omit_captiveportal).
const captivePortalBuilt = true
