package provisioner

import (
	"time"

	pb "github.com/conveyor-ci/conveyor/sdk/provisioner/proto/v1"
)

func instanceToProto(in *Instance) *pb.Instance {
	m := &pb.Instance{Id: in.ID, Name: in.Name, Pool: in.Pool, State: in.State, Reason: in.Reason, Tags: in.Tags}
	if !in.Created.IsZero() {
		m.CreatedUnixNano = in.Created.UnixNano()
	}
	return m
}

func instanceFromProto(m *pb.Instance) *Instance {
	in := &Instance{ID: m.Id, Name: m.Name, Pool: m.Pool, State: m.State, Reason: m.Reason, Tags: m.Tags}
	if in.Tags == nil {
		in.Tags = map[string]string{}
	}
	if m.CreatedUnixNano != 0 {
		in.Created = time.Unix(0, m.CreatedUnixNano)
	}
	return in
}

func instancesToProto(ins []*Instance) []*pb.Instance {
	out := make([]*pb.Instance, 0, len(ins))
	for _, in := range ins {
		if in != nil {
			out = append(out, instanceToProto(in))
		}
	}
	return out
}

func instancesFromProto(ms []*pb.Instance) []*Instance {
	out := make([]*Instance, 0, len(ms))
	for _, m := range ms {
		out = append(out, instanceFromProto(m))
	}
	return out
}

func createToProto(r *CreateRequest) *pb.CreateRequest {
	m := &pb.CreateRequest{RequestId: r.RequestID, Pool: r.Pool, Tags: r.Tags}
	for _, in := range r.Instances {
		b := in.Bootstrap
		m.Instances = append(m.Instances, &pb.InstanceSpec{Name: in.Name, Bootstrap: &pb.Bootstrap{
			Command: b.Command, Env: b.Env, Secret: b.Secret, SecretFile: b.SecretFile, Labels: b.Labels,
		}})
	}
	return m
}

func createFromProto(m *pb.CreateRequest) *CreateRequest {
	r := &CreateRequest{RequestID: m.RequestId, Pool: m.Pool, Tags: m.Tags}
	for _, in := range m.Instances {
		b := in.GetBootstrap()
		r.Instances = append(r.Instances, &InstanceSpec{Name: in.Name, Bootstrap: Bootstrap{
			Command: b.GetCommand(), Env: b.GetEnv(), Secret: b.GetSecret(), SecretFile: b.GetSecretFile(), Labels: b.GetLabels(),
		}})
	}
	return r
}
