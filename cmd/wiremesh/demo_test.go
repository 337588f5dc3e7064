package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestDemo(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	var out, errOut bytes.Buffer
	err := runDemo(context.Background(), nil, &out, &errOut)
	t.Log(out.String())
	require.NoError(t, err, errOut.String())
	s := out.String()
	require.Contains(t, s, "MEMBER")
	require.Equal(t, 6, strings.Count(s, "  ok  "), "six pairs with tcp ok")
	require.NotContains(t, s, "FAIL")
}
