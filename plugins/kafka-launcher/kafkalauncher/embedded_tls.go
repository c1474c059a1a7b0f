package kafkalauncher

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/conveyor-ci/conveyor/plugins/kafka-launcher/kafkatransport"
)

// brokerTLS is the embedded broker's TLS material, loaded from the files
// of its tls block.
type brokerTLS struct {
	config *tls.Config
	// chain is cert_file's certificates, the broker's own first.
	chain []*x509.Certificate
	// clientCAs is client_ca_file's pool; nil: no client certificates.
	clientCAs *x509.CertPool
	// sum fingerprints the files' contents: a restart with renewed files
	// is a restart with other settings.
	sum [sha256.Size]byte
}

// loadBrokerTLS reads and checks the files of the embedded tls block,
// reporting each problem on the attribute naming the file. It returns nil
// if there was one.
func loadBrokerTLS(c *embeddedTLSConfig, bad func(msg string, path ...string)) *brokerTLS {
	at := func(attr string) []string { return []string{"embedded", "tls", attr} }
	read := func(attr, path string) []byte {
		if path == "" {
			bad("must not be empty", at(attr)...)
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			bad(fmt.Sprintf("cannot read %s: %v", path, err), at(attr)...)
		}
		return b
	}
	certPEM := read("cert_file", c.CertFile)
	keyPEM := read("key_file", c.KeyFile)
	var caPEM []byte
	if c.ClientCAFile != "" {
		caPEM = read("client_ca_file", c.ClientCAFile)
	}
	if certPEM == nil || keyPEM == nil || (c.ClientCAFile != "" && caPEM == nil) {
		return nil
	}
	ok := true
	chain, err := parseCertificates(certPEM)
	if err != nil {
		bad(fmt.Sprintf("%s: %v", c.CertFile, err), at("cert_file")...)
		ok = false
	} else if now := time.Now(); now.Before(chain[0].NotBefore) {
		bad(fmt.Sprintf("the certificate in %s is not valid before %s", c.CertFile, chain[0].NotBefore.UTC().Format(time.RFC3339)), at("cert_file")...)
		ok = false
	} else if now.After(chain[0].NotAfter) {
		bad(fmt.Sprintf("the certificate in %s expired on %s", c.CertFile, chain[0].NotAfter.UTC().Format(time.RFC3339)), at("cert_file")...)
		ok = false
	}
	var pair tls.Certificate
	if ok {
		if pair, err = tls.X509KeyPair(certPEM, keyPEM); err != nil {
			bad(fmt.Sprintf("%s does not hold the private key of cert_file %s: %v", c.KeyFile, c.CertFile, err), at("key_file")...)
			ok = false
		}
	}
	bt := &brokerTLS{chain: chain}
	if caPEM != nil {
		bt.clientCAs = x509.NewCertPool()
		if !bt.clientCAs.AppendCertsFromPEM(caPEM) {
			bad(fmt.Sprintf("%s holds no PEM certificate", c.ClientCAFile), at("client_ca_file")...)
			ok = false
		}
	}
	if !ok {
		return nil
	}
	bt.config = &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{pair}}
	if bt.clientCAs != nil {
		bt.config.ClientAuth = tls.RequireAndVerifyClientCert
		bt.config.ClientCAs = bt.clientCAs
	}
	h := sha256.New()
	for _, b := range [][]byte{certPEM, keyPEM, caPEM} {
		fmt.Fprintf(h, "%d:", len(b))
		h.Write(b)
	}
	copy(bt.sum[:], h.Sum(nil))
	return bt
}

// parseCertificates returns the certificates of a PEM file, in order.
func parseCertificates(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("holds no PEM certificate")
	}
	return certs, nil
}

// checkMasterTLS checks, at configuration time, that the master's tls
// block lets it reach the embedded broker at addr: its CA (the system's
// without ca_file) verifies the broker's certificate for addr's host, and
// the broker's client CA, if any, verifies the master's certificate.
// Unreadable files were reported already and are skipped here.
func checkMasterTLS(bt *brokerTLS, addr string, master *kafkatransport.TLS, bad func(msg string, path ...string)) {
	host, _, err := net.SplitHostPort(addr)
	if ip := net.ParseIP(host); err != nil || host == "" || (ip != nil && ip.IsUnspecified()) {
		return // reported on embedded_addr
	}
	if !master.InsecureSkipVerify {
		opts := x509.VerifyOptions{DNSName: host, Intermediates: x509.NewCertPool()}
		for _, c := range bt.chain[1:] {
			opts.Intermediates.AddCert(c)
		}
		if master.CAFile != "" {
			ca, err := os.ReadFile(master.CAFile)
			if err != nil {
				return
			}
			opts.Roots = x509.NewCertPool()
			if !opts.Roots.AppendCertsFromPEM(ca) {
				return
			}
		}
		if _, err := bt.chain[0].Verify(opts); err != nil {
			what := "the system's CAs"
			if master.CAFile != "" {
				what = master.CAFile
			}
			bad(fmt.Sprintf("the master would refuse its embedded broker at %s: %s does not verify embedded.tls.cert_file for %q: %v", addr, what, host, err), "tls", "ca_file")
		}
	}
	if bt.clientCAs == nil {
		return
	}
	if master.CertFile == "" || master.KeyFile == "" {
		bad("embedded.tls.client_ca_file makes the broker ask every client for a certificate: the master needs its own, tls { cert_file = ..., key_file = ... }", "tls")
		return
	}
	pemBytes, err := os.ReadFile(master.CertFile)
	if err != nil {
		return
	}
	chain, err := parseCertificates(pemBytes)
	if err != nil {
		return
	}
	opts := x509.VerifyOptions{Roots: bt.clientCAs, Intermediates: x509.NewCertPool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	for _, c := range chain[1:] {
		opts.Intermediates.AddCert(c)
	}
	if _, err := chain[0].Verify(opts); err != nil {
		bad(fmt.Sprintf("the embedded broker would refuse the master's certificate: embedded.tls.client_ca_file does not verify %s: %v", master.CertFile, err), "tls", "cert_file")
	}
}
