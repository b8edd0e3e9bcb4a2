// A Go client configured only by the environment: net/http's default transport reads
// HTTPS_PROXY, and on Linux crypto/x509 reads SSL_CERT_FILE (which replaces the system roots,
// so it must point at the bundle).
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
)

func main() {
	body := []byte(`{"model":"gpt-test","messages":[{"role":"user","content":"hi"}]}`)
	req, err := http.NewRequest("POST", "https://api.openai.com/v1/chat/completions", bytes.NewReader(body))
	if err != nil {
		panic(err)
	}
	req.Header.Set("Authorization", "Bearer "+os.Getenv("OPENAI_API_KEY"))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out struct {
		Choices []struct {
			Message struct{ Content string } `json:"message"`
		} `json:"choices"`
	}
	if err := json.Unmarshal(raw, &out); err != nil || len(out.Choices) == 0 {
		fmt.Fprintln(os.Stderr, resp.Status, string(raw))
		os.Exit(1)
	}
	fmt.Println(out.Choices[0].Message.Content)
}
