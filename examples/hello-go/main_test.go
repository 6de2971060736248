package main

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	body, err := io.ReadAll(rec.Result().Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	return rec.Code, string(body)
}

func TestHealthz(t *testing.T) {
	code, body := get(t, newHandler("1.2.3"), "/healthz")
	if code != http.StatusOK {
		t.Fatalf("GET /healthz: status %d, want 200", code)
	}
	if body != "ok" {
		t.Fatalf("GET /healthz: body %q, want %q", body, "ok")
	}
}

func TestRoot(t *testing.T) {
	code, body := get(t, newHandler("1.2.3"), "/")
	if code != http.StatusOK {
		t.Fatalf("GET /: status %d, want 200", code)
	}
	if !strings.Contains(body, "hello-go 1.2.3") {
		t.Fatalf("GET /: body %q does not mention the version", body)
	}
}

func TestUnknownPath(t *testing.T) {
	code, _ := get(t, newHandler("dev"), "/nope")
	if code != http.StatusNotFound {
		t.Fatalf("GET /nope: status %d, want 404", code)
	}
}

func TestVersionFlag(t *testing.T) {
	var out bytes.Buffer
	if err := run([]string{"--version"}, &out); err != nil {
		t.Fatalf("run --version: %v", err)
	}
	if got, want := out.String(), "hello-go "+version+"\n"; got != want {
		t.Fatalf("run --version: printed %q, want %q", got, want)
	}
}
